#!/usr/bin/env bash
# Builds `easel` with the `cuda` and `cudnn` features on a machine without a GPU or a system CUDA toolkit, for
# carrying to a GPU host (../shared/reference/gpu.md has the why and the measurements).
#
#   scripts/build-cuda.sh            # release build → target-cuda/gpu/{easel,easel-diffusion-bench,easel-diffusion-parity,easel-diffusion-tests}.xz
#   scripts/build-cuda.sh --check    # `cargo check --features cudnn` only (keeps the features from rotting)
#   EASEL_CUDNN=0 scripts/build-cuda.sh   # without cuDNN: candle's im2col convolutions, no libcudnn needed
#
# The server, the two tool binaries a GPU check needs (scripts/gpu/run.sh: parity and the
# benchmark against diffusers) and the diffusion crate's unit tests (the cuDNN convolution checked
# on the device), stripped and xz-compressed (7–16 MB each): the GPU host unpacks them with
# Python's lzma, so it needs neither xz nor zstd.
#
# - The CUDA 13.0 toolkit comes from PyPI's nvidia-* wheels, installed once into a venv under
#   $EASEL_CUDA_CACHE (default ~/.cache/easel-cuda); 13.0 matches driver 580, and newer toolkits
#   may emit PTX that driver cannot JIT.
# - The wheels hold only versioned libraries and no libcuda (the driver's), so a link folder gets
#   unversioned symlinks and a link-time stub libcuda.so (soname libcuda.so.1) made from the cu*
#   names cudarc declares; the GPU host's driver provides the real one at run time.
# - The convolutions run on cuDNN (feature `cudnn`, crates/easel-diffusion/src/cudnn.rs): linked
#   against a stub libcudnn.so (soname libcudnn.so.9) made the same way from cudarc's cudnn*
#   names, rather than downloading cuDNN's 700 MB wheel; at run time the host's cuDNN 9 is used
#   (PyTorch's wheels carry it: nvidia/cudnn/lib).
# - CUDA_COMPUTE_CAP defaults to 90 (H100/H200); candle otherwise asks nvidia-smi, which is not here.
# - Its own target folder (CARGO_TARGET_DIR, default target-cuda), so the CPU build is untouched.
#
# On the GPU host: point LD_LIBRARY_PATH at the nvidia/cu13/lib folder of the Python that holds
# the same wheels, plus the driver's folder, and run `easel serve` with `device = "cuda"`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${EASEL_CUDA_CACHE:-$HOME/.cache/easel-cuda}"
venv="$cache/venv"
link="$cache/link"
mode="${1:-build}"
case "$mode" in build | --check) ;; *) echo "usage: $0 [--check]" >&2; exit 2 ;; esac

if [[ ! -f "$venv/.toolkit-installed" ]]; then
    echo "installing the CUDA 13.0 toolkit wheels into $venv (once)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-crt==13.0.88" "nvidia-cuda-runtime==13.0.96" \
        "nvidia-nvvm==13.0.88" "nvidia-cuda-cccl==13.0.85" "nvidia-cublas<13.1" \
        "nvidia-curand==10.4.0.35" "nvidia-cuda-nvrtc==13.0.88"
    touch "$venv/.toolkit-installed"
fi
cuda="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
[[ -x "$cuda/bin/nvcc" ]] || { echo "no nvcc under $cuda" >&2; exit 1; }

# The link folder: unversioned names for the wheels' libraries, and the libcuda stub.
mkdir -p "$link"
for lib in cublas cublasLt cudart nvrtc; do
    ln -sf "$(ls "$cuda"/lib/lib$lib.so.13* | head -1)" "$link/lib$lib.so"
done
ln -sf "$(ls "$cuda"/lib/libcurand.so.10* | head -1)" "$link/libcurand.so"
# A link-time stub for one of cudarc's libraries: every `$prefix*` function its bindings declare
# (under src/$module/sys), with the real library's soname.
stub() {
    local module="$1" prefix="$2" soname="$3" sys
    [[ -f "$link/${soname%.so.*}.so" ]] && return
    sys="$(cd "$root" && cargo metadata --format-version 1 --features easel-server/cudnn | "$venv/bin/python" -c '
import json, os, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "cudarc":
        print(os.path.join(os.path.dirname(p["manifest_path"]), "src", sys.argv[1], "sys/mod.rs")); break' "$module")"
    grep -o "pub unsafe fn $prefix[A-Za-z0-9_]*" "$sys" | sed 's/pub unsafe fn \(.*\)/void \1(void) {}/' | sort -u > "$link/$module-stub.c"
    gcc -shared -fPIC -Wl,-soname,"$soname" -o "$link/${soname%.so.*}.so" "$link/$module-stub.c"
    echo "${soname%.so.*} stub: $(wc -l < "$link/$module-stub.c") functions"
}
stub driver cu libcuda.so.1
stub cudnn cudnn libcudnn.so.9

export PATH="$cuda/bin:$PATH" CUDA_ROOT="$cuda" CUDA_PATH="$cuda" CUDA_HOME="$cuda"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" LIBRARY_PATH="$link:$cuda/lib"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target-cuda}"
cd "$root"
if [[ "$mode" == --check ]]; then
    cargo check --features cudnn -p easel-server --bin easel
    exit 0
fi
feature=cudnn
[[ "${EASEL_CUDNN:-1}" == 0 ]] && feature=cuda
bins=(easel easel-diffusion-bench easel-diffusion-parity)
cargo build --release -p easel-server --bin easel -p easel-diffusion --bin easel-diffusion-bench \
    --bin easel-diffusion-parity --features "easel-server/$feature,easel-diffusion/tools"
out="$CARGO_TARGET_DIR/gpu"
mkdir -p "$out"
for b in "${bins[@]}"; do
    strip -o "$out/$b" "$CARGO_TARGET_DIR/release/$b"
    xz -9 -T0 -f "$out/$b"
done
# The diffusion crate's unit tests, for the GPU host to run the cuDNN convolution's check on the
# device before anything is timed (scripts/gpu/run.sh; the host has no Rust toolchain).
if [[ "$feature" == cudnn ]]; then
    tests="$(cargo test --release --no-run -p easel-diffusion --lib --features easel-diffusion/cudnn \
        --message-format=json | "$venv/bin/python" -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "easel_diffusion":
        print(m["executable"])')"
    strip -o "$out/easel-diffusion-tests" "$tests"
    xz -9 -T0 -f "$out/easel-diffusion-tests"
fi
ls -l "$out"

#!/usr/bin/env bash
# The GPU check, run on the GPU host over a copy of this repo (BENCHMARKS.md, "Local diffusion on a GPU"):
#
#   scripts/gpu/run.sh BIN_DIR OUT_DIR
#
# BIN_DIR holds what scripts/build-cuda.sh leaves in target-cuda/gpu/ (easel, the tests,
# easel-diffusion-bench and easel-diffusion-parity, xz-compressed) and any wheels the host's
# Python lacks (*.whl: diffusers 0.42.1 and importlib_metadata; pure Python). Made on the build
# machine, about 45 MB, in a folder git ignores so that it travels only when named:
#
#   scripts/build-cuda.sh && mkdir -p .gpu && cp target-cuda/gpu/*.xz .gpu/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .gpu diffusers==0.42.1 importlib_metadata==10.2.0
#   echo /.gpu/ >> .git/info/exclude
#
# Everything is written to OUT_DIR: run.log (all output, with times), summary.txt (the result
# lines), the served images and, with the profile phase, profile.txt. The host has the NVIDIA
# driver, PyTorch with CUDA and the nvidia-* wheels (cuBLAS, cuRAND, NVRTC, the runtime) that the
# CUDA build links against, and no Rust toolchain.
#
# 1. Smoke (stops the run on failure, cheaply): a tiny random sd-turbo through the benchmark
#    binary in f16, bf16 and f32 on the GPU, the cuDNN convolution's unit test on the device
#    (when BIN_DIR has easel-diffusion-tests), then `easel serve` answering one request.
# 2. Full-size random models (create-random; sdxl made in the background while the others run).
# 3. `easel serve` on the full sd-turbo (device = "cuda"): two requests through the HTTP API.
# 4. The benchmark against diffusers (scripts/parity/bench_diffusers.py) for each family and
#    dtype at each size: s/step of the UNet loop, VAE decode, and the peak device memory of each
#    process, sampled by nvidia-smi every 20 ms (the same way for both sides).
# 5. Parity with diffusers on the same GPU (scripts/parity/gpu.py).
# 6. With PHASES including `profile`: sd-1.5 at 1024² (2 steps, CFG) with the per-operation
#    timers under CUDA_LAUNCH_BLOCKING=1, so each operation's time is its kernels' (profile.txt).
#
# PHASES (default serve,bench,parity) picks among 3–6; FAMILIES (default sd-turbo,sd-1.5,sdxl),
# SIZES, STEPS, BENCH_DTYPES and PARITY_DTYPES narrow the rest. Phases run in priority order and
# none starts past $DEADLINE seconds (default 540: the device's calls are limited; on an H200 a
# run with DEADLINE=450 was stopped in diffusers' sd-1.5 in bf16, before sdxl in bf16). To try the script itself on a
# machine without a GPU: DEVICE=cpu SCALE=tiny SIZES=64 BENCH_DTYPES=f32 PARITY_DTYPES=
# PARITY_SIZE=64 PYTHON=scripts/parity/.venv/bin/python scripts/gpu/run.sh DIR OUT, DIR holding
# the CPU build's three binaries, xz-compressed.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bins="$(cd "$1" && pwd)"
out="$(mkdir -p "$2" && cd "$2" && pwd)"
device="${DEVICE:-cuda}"
scale="${SCALE:-full}"
sizes="${SIZES:-512,1024}"
steps="${STEPS:-10}"
bench_dtypes="${BENCH_DTYPES:-f16,bf16}"
parity_dtypes="${PARITY_DTYPES-f16,bf16}"
parity_size="${PARITY_SIZE:-512}"
families="${FAMILIES:-sd-turbo,sd-1.5,sdxl}"
phases="${PHASES:-serve,bench,parity}"
deadline="${DEADLINE:-540}"
py="${PYTHON:-python3}"
work="${WORK:-/tmp/easel-gpu}"
start=$EPOCHSECONDS
mkdir -p "$work/bin" "$work/m"
log() { echo "[$((EPOCHSECONDS - start)) s] $*" | tee -a "$out/run.log"; }
result() { echo "$*" | tee -a "$out/summary.txt" >>"$out/run.log"; }
left() { echo $((deadline - (EPOCHSECONDS - start))); }
# Runs a command with its output in run.log, killed at the deadline.
step() {
    local t
    t="$(left)"
    if ((t <= 5)); then log "SKIPPED (deadline): $*"; return 124; fi
    log "\$ $*"
    # A shell function runs in a child bash (timeout runs programs): the functions and variables
    # it needs are exported below.
    if [[ "$(type -t "$1")" == function ]]; then
        timeout "$t" bash -c '"$@"' _ "$@" >>"$out/run.log" 2>&1
    else
        timeout "$t" "$@" >>"$out/run.log" 2>&1
    fi
    local rc=$?
    ((rc == 0)) || log "exit $rc: $*"
    return $rc
}
want() { [[ ",$families," == *",$1,"* ]]; }
phase() { [[ ",$phases," == *",$1,"* ]]; }

# --- set-up: binaries, wheels, libraries ---
for f in "$bins"/*.xz; do
    name="$(basename "$f" .xz)"
    "$py" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$f" "$work/bin/$name"
    chmod +x "$work/bin/$name"
done
easel="$work/bin/easel" bench="$work/bin/easel-diffusion-bench" parity="$work/bin/easel-diffusion-parity"
if compgen -G "$bins/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" "$bins"/*.whl
    export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
fi
nv="$("$py" -c 'import glob, os, nvidia; print(":".join(sorted({d for p in nvidia.__path__ for d in glob.glob(os.path.join(p, "*", "lib"))})))' 2>/dev/null)"
export LD_LIBRARY_PATH="$nv:/usr/local/nvidia/lib64:/usr/local/nvidia/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONWARNINGS=ignore TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1 NO_COLOR=1
log "host: $(nproc) cores; $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo no nvidia-smi)"
log "python: $("$py" -c 'import torch, diffusers, transformers; print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version(), "diffusers", diffusers.__version__, "transformers", transformers.__version__)' 2>&1 | tail -1)"
ldd "$bench" | grep 'not found' | tee -a "$out/run.log"

# Peak device memory of whatever runs while $1... runs: nvidia-smi sampled every 20 ms, minus what
# was in use before it started (reported as "peak device memory N MiB").
smi_peak() {
    if [[ "$device" != cuda* ]]; then "$@"; return; fi
    local base f="$work/smi.$$" pid rc
    base="$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 20 >"$f" &
    pid=$!
    "$@"
    rc=$?
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    echo "peak device memory $(($(sort -n "$f" | tail -1) - base)) MiB (nvidia-smi, 20 ms samples, $base MiB in use before)"
    return $rc
}

# One model of one family on the easel server: start, wait for /readyz, two requests, stop.
serve() {
    local family="$1" model="$2" size="$3" data="$work/serve-$1" port=18080
    mkdir -p "$data"
    cat >"$data/easel.toml" <<EOF
[server]
bind = "127.0.0.1:$port"
[storage]
data_dir = "$data"
[[models]]
id = "$family"
backend = "local"
family = "$family"
path = "$model"
device = "$device"
EOF
    "$easel" serve --config "$data/easel.toml" >>"$out/run.log" 2>&1 &
    local pid=$! i
    for i in $(seq 1 240); do
        curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
        kill -0 "$pid" 2>/dev/null || { log "easel serve exited"; return 1; }
        sleep 0.5
    done
    local rc=0 n
    for n in 1 2; do
        curl -s -o "$work/answer.json" -w "request $n: HTTP %{http_code}, %{time_total} s\n" \
            "http://127.0.0.1:$port/v1/images/generations" -H 'content-type: application/json' \
            -d "{\"model\": \"$family\", \"prompt\": \"a lighthouse at dusk\", \"size\": \"${size}x$size\"}" |
            tee -a "$out/run.log" | grep -q 'HTTP 200' || rc=1
    done
    "$py" -c 'import base64, json, sys; d = json.load(open(sys.argv[1])); open(sys.argv[2], "wb").write(base64.b64decode(d["data"][0]["b64_json"])); print("usage", json.dumps(d.get("usage")))' \
        "$work/answer.json" "$out/$family-$size.png" >>"$out/run.log" 2>&1 || { head -c 600 "$work/answer.json" >>"$out/run.log"; rc=1; }
    kill "$pid"
    wait "$pid" 2>/dev/null
    return $rc
}

export root out device work py easel bench parity start deadline
export -f log left smi_peak serve

# --- 1. smoke ---
tiny="$work/m/tiny-sd-turbo"
[[ -d "$tiny" ]] || step "$parity" create-random --family sd-turbo --scale tiny --out "$tiny" || exit 1
smoke_dtypes=f32
[[ "$device" == cuda* ]] && smoke_dtypes="f16 bf16 f32"
for dt in $smoke_dtypes; do
    step "$bench" --model "$tiny" --family sd-turbo --device "$device" --dtype "$dt" --size 64 --runs 1 || {
        result "SMOKE FAILED: the benchmark binary, tiny sd-turbo, $dt on $device"; exit 1; }
done
if [[ -x "$work/bin/easel-diffusion-tests" ]]; then
    # The cuDNN convolution against candle's on the CPU, shape by shape, in f32 / f16 / bf16.
    step "$work/bin/easel-diffusion-tests" cudnn:: --test-threads 1 --nocapture || {
        result "SMOKE FAILED: the cuDNN convolution's unit test on $device"; exit 1; }
    result "smoke: the cuDNN convolution matches candle's ($(grep -o 'test result: [a-z]*\. [0-9]* passed' "$out/run.log" | tail -1))"
fi
if step serve sd-turbo "$tiny" 256; then result "smoke: tiny sd-turbo in $smoke_dtypes and served over HTTP on $device"; else
    result "SMOKE FAILED: easel serve on $device"; exit 1; fi

# --- 2. full-size models ---
create() { [[ -d "$work/m/$1" ]] || "$parity" create-random --family "$1" --scale "$scale" --out "$work/m/$1" >/dev/null; }
log "creating $scale models ($families)"
pids=()
for f in sd-turbo sd-1.5; do want "$f" && { create "$f" & pids+=($!); }; done
want sdxl && { create sdxl >>"$out/run.log" 2>&1 & xl=$!; }
for p in "${pids[@]}"; do wait "$p"; done
log "created sd-turbo / sd-1.5"

# --- 3. the server on the full sd-turbo ---
phase serve && want sd-turbo && { step serve sd-turbo "$work/m/sd-turbo" 512 && result "served: full sd-turbo 512² on $device over HTTP ($(grep -o 'request 2: HTTP 200, [0-9.]* s' "$out/run.log" | tail -1))"; }

# --- 4. benchmark against diffusers ---
args_of() {
    case "$1" in
        sd-turbo) echo "--steps $steps --guidance 0 --scheduler euler" ;;
        sd-1.5) echo "--steps $steps --guidance 7.5 --scheduler ddim" ;;
        sdxl) echo "--steps $steps --guidance 5.0 --scheduler euler" ;;
    esac
}
bench_pair() {
    phase bench || return 0
    local family="$1" dt="$2" a
    a="$(args_of "$family")"
    log "bench $family $dt $sizes ($a)"
    # shellcheck disable=SC2086
    step smi_peak "$bench" --model "$work/m/$family" --family "$family" --device "$device" --dtype "$dt" --size "$sizes" --runs 2 $a
    # shellcheck disable=SC2086
    step smi_peak "$py" "$root/scripts/parity/bench_diffusers.py" --model "$work/m/$family" --family "$family" \
        --device "$device" --dtype "$dt" --size "$sizes" --runs 2 --threads "$(nproc)" $a
}
parity_run() {
    phase parity || return 0
    step "$py" "$root/scripts/parity/gpu.py" --bin "$parity" --work "$work/m-parity" --scale "$scale" \
        --size "$parity_size" --families "$1" --dtypes "$parity_dtypes" --device "$device"
}
if phase profile && want sd-1.5; then
    log "profile: sd-1.5 1024², 2 steps, CFG, ${bench_dtypes%%,*}, CUDA_LAUNCH_BLOCKING=1"
    if (($(left) > 5)); then
        CUDA_LAUNCH_BLOCKING=1 timeout "$(left)" "$bench" --model "$work/m/sd-1.5" --family sd-1.5 --device "$device" \
            --dtype "${bench_dtypes%%,*}" --size 1024 --steps 2 --guidance 7.5 --scheduler ddim --runs 1 --profile \
            --min-share 0.002 >"$out/profile.txt" 2>&1 || log "profile: exit $?"
    else
        log "SKIPPED (deadline): profile"
    fi
fi
first_dt="${bench_dtypes%%,*}"
for f in sd-turbo sd-1.5; do want "$f" && bench_pair "$f" "$first_dt"; done
# --- 5. parity (the same models, under the names gpu.py looks for) ---
mkdir -p "$work/m-parity"
ps=()
for f in sd-turbo sd-1.5; do
    want "$f" || continue
    ps+=("$f")
    [[ -e "$work/m-parity/$f-$scale" ]] || ln -s "$work/m/$f" "$work/m-parity/$f-$scale"
done
((${#ps[@]})) && parity_run "$(IFS=,; echo "${ps[*]}")"
if want sdxl; then
    wait "$xl"
    log "created sdxl"
    [[ -e "$work/m-parity/sdxl-$scale" ]] || ln -s "$work/m/sdxl" "$work/m-parity/sdxl-$scale"
    bench_pair sdxl "$first_dt"
    parity_run sdxl
fi
IFS=, read -ra rest <<<"${bench_dtypes#"$first_dt"}"
for dt in "${rest[@]}"; do
    [[ -n "$dt" ]] || continue
    for f in sd-turbo sd-1.5 sdxl; do want "$f" && bench_pair "$f" "$dt"; done
done

grep -E '\] bench |^(run |load|peak device|sd-turbo |sd-1.5 |sdxl |# |request )|FAIL|SKIPPED|exit [0-9]' "$out/run.log" >>"$out/summary.txt"
log "done"

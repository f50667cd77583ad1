#!/usr/bin/env bash
# Parity of Easel's local pipeline with diffusers. Installs torch + diffusers (about 3 GB of
# wheels, a 5.7 GB venv) into its own venv on first use; never run in CI.
#   scripts/parity/run.sh [--scale tiny|full] [--size 64] [--families sd-1.5,sdxl]   (parity.py)
#   scripts/parity/run.sh golden                    (golden.py: rewrites the fixtures of tests/golden.rs)
#   scripts/parity/run.sh taesd [--golden]          (taesd.py: the tiny autoencoder against AutoencoderTiny)
#   scripts/parity/run.sh flux [--size 32] [--families flux-dev]   (flux.py: FLUX.1 by component and end to end)
#   scripts/parity/run.sh qwen [--scale tiny]       (qwen.py: Qwen-Image by component and end to end)
#   scripts/parity/run.sh qwen-edit vision|pipeline [--golden]   (qwen_edit.py: Qwen-Image-Edit's vision tower,
#                                                   processor and whole edit; --golden rewrites tests/golden/qwen-edit/)
# PARITY_PROFILE=debug builds and uses the debug binary (no release build of candle; fine for tiny models).
# On a GPU host, parity is gpu.py (Easel's CUDA build against diffusers on the same GPU in f32, f16 and bf16),
# run by scripts/gpu/run.sh; here, `.venv/bin/python gpu.py --bin target/release/easel-diffusion-parity --device cpu
# --scale tiny --size 64 --dtypes f16` compares half precision on the CPU.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${PARITY_VENV:-$root/scripts/parity/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.15.0 diffusers==0.42.1 transformers==5.23.0 safetensors numpy
fi
script=parity.py
if [ "${1:-}" = golden ]; then
  script=golden.py
  shift
elif [ "${1:-}" = taesd ]; then
  script=taesd.py
  shift
elif [ "${1:-}" = flux ]; then
  script=flux.py
  shift
elif [ "${1:-}" = qwen ]; then
  script=qwen.py
  shift
elif [ "${1:-}" = qwen-edit ]; then
  script=qwen_edit.py
  shift
fi
profile="${PARITY_PROFILE:-release}"
target="${CARGO_TARGET_DIR:-$root/target}"
if [ "$profile" = release ]; then
  cargo build --release -p easel-diffusion --features tools --bin easel-diffusion-parity
else
  cargo build -p easel-diffusion --features tools --bin easel-diffusion-parity
fi
exec "$venv/bin/python" "$root/scripts/parity/$script" --bin "$target/$profile/easel-diffusion-parity" "$@"

#!/usr/bin/env bash
# Parity of Easel's local pipeline with diffusers. Installs torch + diffusers (about 3 GB of
# wheels, a 5.7 GB venv) into its own venv on first use; never run in CI.
#   scripts/parity/run.sh [--scale tiny|full] [--size 64] [--families sd-1.5,sdxl]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${PARITY_VENV:-$root/scripts/parity/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.15.0 diffusers==0.42.1 transformers==5.23.0 safetensors numpy
fi
target="${CARGO_TARGET_DIR:-$root/target}"
cargo build --release -p easel-diffusion --features tools --bin easel-diffusion-parity
exec "$venv/bin/python" "$root/scripts/parity/parity.py" --bin "$target/release/easel-diffusion-parity" "$@"

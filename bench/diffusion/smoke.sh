#!/usr/bin/env bash
# The diffusion benchmark once, tiny (scripts/test.sh): a random tiny sd-turbo with a tiny
# autoencoder through `easel-diffusion-bench` at 64², with the per-operation profile and the TAESD
# decode. Fails if it errors or either is missing from its output. (`--ops` and `--convs` time full-width VAE layers: release builds only.) The full side-by-side runs against diffusers are
# bench/diffusion/pairs.sh (kernels.md, winograd.md); they need scripts/parity/.venv (torch).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
cd "$root"
cargo build --quiet -p easel-diffusion --features tools --bin easel-diffusion-bench --bin easel-diffusion-parity
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$target/debug/easel-diffusion-parity" create-random --family sd-turbo --scale tiny --out "$work/m" --tiny-vae >/dev/null
bench="$target/debug/easel-diffusion-bench"
out="$("$bench" --model "$work/m" --family sd-turbo --size 64 --runs 1 --profile --tiny-vae "$work/m/vae_tiny")"
echo "$out"
grep -q -- '-- per operation --' <<<"$out" || { echo "the bench printed no profile" >&2; exit 1; }
grep -q 'taesd decode' <<<"$out" || { echo "the bench printed no TAESD decode" >&2; exit 1; }
echo "diffusion benchmark smoke: ok"

#!/usr/bin/env bash
# Side-by-side CPU timing of Easel's local pipeline and diffusers on the same model folder.
#   bench/diffusion/pairs.sh MODEL_DIR [PAIRS] [-- extra args for both, e.g. --steps 4 --guidance 7.5 --scheduler ddim]
# For each pair it runs every Easel bench binary named in $EASEL_BINS (default: the release
# easel-diffusion-bench; give several, e.g. "target/release/bench-before target/release/easel-diffusion-bench",
# to compare builds) and then diffusers (scripts/parity/bench_diffusers.py in the parity venv), one
# after the other, and prints each one's "run" line (text, UNet, VAE, total wall time, CPU-seconds
# of the run, peak RSS) and the whole process's wall and CPU time (loading included; bash's `time`).
# Needs a full-size model (`easel models create-random --scale full`).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
model="$1"
shift
pairs=3
if [ $# -ge 1 ] && [ "$1" != "--" ]; then pairs="$1"; shift; fi
[ "${1:-}" = "--" ] && shift
family="${FAMILY:-sd-turbo}"
size="${SIZE:-512}"
bins="${EASEL_BINS:-$root/target/release/easel-diffusion-bench}"
py="${PARITY_VENV:-$root/scripts/parity/.venv}/bin/python"
TIMEFORMAT='    process: wall %R s, user %U s, sys %S s'
export PYTHONWARNINGS=ignore TRANSFORMERS_VERBOSITY=error
echo "# $(date -u +%FT%TZ) $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq 1 "$pairs"); do
  for bin in $bins; do
    printf '%s pair %s: ' "$(basename "$bin")" "$i"
    time ("$bin" --model "$model" --family "$family" --size "$size" --no-warmup "$@" | grep '^run ')
  done
  printf 'diffusers pair %s: ' "$i"
  time ("$py" "$root/scripts/parity/bench_diffusers.py" --model "$model" --family "$family" --size "$size" --runs 0 "$@" 2>/dev/null | grep '^warm-up ' | sed 's/^warm-up /run /')
  echo "# load $(cut -d' ' -f1-3 /proc/loadavg)"
done

#!/usr/bin/env bash
# Easel's pixel work vs Pillow, in one run on one machine, on the same 1024x1024 input.
# Installs Pillow into bench/.venv when missing. Prints a table with the ratio Pillow / Easel.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$PWD/target/bench-pixels"
mkdir -p "$out"
if [ ! -x bench/.venv/bin/python ]; then python3 -m venv bench/.venv; fi
bench/.venv/bin/python -m pip install --quiet --disable-pip-version-check pillow
cargo bench -p easel-core --bench pixels -- "$out" > "$out/easel.json"
bench/.venv/bin/python bench/pixels_pillow.py "$out" > "$out/pillow.json"
python3 - "$out" <<'PY'
import json, sys, platform, os
d = sys.argv[1]
e, p = json.load(open(f"{d}/easel.json")), json.load(open(f"{d}/pillow.json"))
print(f"machine: {platform.machine()}, {os.cpu_count()} cores")
print(f"{'operation (1024x1024)':<22}{'Easel ms':>10}{'Pillow ms':>11}{'Pillow/Easel':>14}")
for k in ["b64_decode_png", "png_encode", "webp_q80", "jpeg_q90", "lanczos_512", "mask_composite"]:
    print(f"{k:<22}{e[k]:>10.2f}{p[k]:>11.2f}{p[k]/e[k]:>13.1f}x")
for k in ["png_bytes", "webp_q80_bytes", "jpeg_q90_bytes"]:
    print(f"{k:<22}{e[k]:>10}{p[k]:>11}")
PY

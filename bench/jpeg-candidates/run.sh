#!/usr/bin/env bash
# JPEG q90 candidates against Pillow, interleaved, ROUNDS times (default 3). Needs bench/.venv
# (made by bench/pixels.sh) for Pillow. Builds this crate in release into its own target/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
cargo build --release --quiet
bin="$here/target/release/jpeg-candidates"
work="$(mktemp -d)"
"$bin" write "$work"
py="$here/../.venv/bin/python"
"$py" -c "
from PIL import Image
for n in ['jpeg-encoder', 'mozjpeg-fastest', 'mozjpeg-default']:
    im = Image.open('$work/' + n + '.jpg'); im.load()
    print(f'{n}: Pillow reads it: {im.format} {im.size} progressive={bool(im.info.get(\"progressive\"))}')
"
for _ in $(seq "${1:-3}"); do
  "$bin" jpeg-encoder 40
  "$bin" mozjpeg-fastest 20
  "$py" pillow.py "$work/input.ppm" 40
done
"$bin" mozjpeg-default 3
rm -rf "$work"

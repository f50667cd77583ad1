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
# Pillow must read every file; PSNR against the input, next to Pillow's own q90 file.
"$py" - "$work" <<'PY'
import io, math, sys
from PIL import Image, ImageChops, ImageStat
work = sys.argv[1]
source = Image.open(f"{work}/input.ppm").convert("RGB")
def psnr(image):
    rms = ImageStat.Stat(ImageChops.difference(source, image.convert("RGB"))).rms
    return 10 * math.log10(255**2 / (sum(r * r for r in rms) / 3))
out = io.BytesIO()
source.save(out, "JPEG", quality=90)
files = {n: open(f"{work}/{n}.jpg", "rb").read() for n in ["easel", "jpeg-encoder", "mozjpeg-fastest", "mozjpeg-default"]}
files["pillow"] = out.getvalue()
for name, data in files.items():
    image = Image.open(io.BytesIO(data))
    image.load()
    progressive = bool(image.info.get("progressive"))
    print(f"{name}: Pillow reads it: {image.format} {image.size} progressive={progressive} {len(data)} bytes PSNR {psnr(image):.3f} dB")
PY
for _ in $(seq "${1:-3}"); do
  "$bin" easel 100
  "$bin" jpeg-encoder 40
  "$bin" mozjpeg-fastest 20
  "$py" pillow.py "$work/input.ppm" 100
done
"$bin" mozjpeg-default 3
rm -rf "$work"

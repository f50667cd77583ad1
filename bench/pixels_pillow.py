"""Pillow on the same pixel work as Easel's `pixels` bench, on the same input files.

Usage: python pixels_pillow.py DIR  (DIR holds input.png and mask.png from the Rust bench).
Prints one JSON object of median milliseconds per operation.
"""

import base64
import io
import json
import statistics
import sys
import time

from PIL import Image

folder = sys.argv[1]
png = open(f"{folder}/input.png", "rb").read()
b64 = base64.b64encode(png)
image = Image.open(io.BytesIO(png)).convert("RGB")
mask = Image.open(f"{folder}/mask.png").convert("RGBA").getchannel("A")
generated = Image.new("RGB", (1024, 1024), (10, 200, 30))


def time_ms(fn, runs=15):
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(samples), 2)


def encode(fmt, **kwargs):
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def decode():
    decoded = Image.open(io.BytesIO(base64.b64decode(b64)))
    decoded.load()
    return decoded


results = {
    "b64_decode_png": time_ms(decode),
    "png_encode": time_ms(lambda: encode("PNG")),
    "webp_q80": time_ms(lambda: encode("WEBP", quality=80)),
    "jpeg_q90": time_ms(lambda: encode("JPEG", quality=90)),
    "lanczos_512": time_ms(lambda: image.resize((512, 512), Image.LANCZOS)),
    "mask_composite": time_ms(lambda: Image.composite(image, generated, mask)),
    "png_bytes": len(encode("PNG")),
    "webp_q80_bytes": len(encode("WEBP", quality=80)),
    "jpeg_q90_bytes": len(encode("JPEG", quality=90)),
}
print(json.dumps(results))

"""Pillow (libjpeg-turbo) on the PPM that `jpeg-candidates write` made: quality 90, its defaults
(4:2:0, baseline, standard tables). Usage: pillow.py input.ppm ITERATIONS."""

import io
import sys
import time

from PIL import Image

image = Image.open(sys.argv[1]).convert("RGB")
iterations = int(sys.argv[2])


def encode():
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return len(out.getvalue())


encode()
cpu, wall = time.process_time(), time.perf_counter()
for _ in range(iterations):
    size = encode()
per = 1000 / iterations
print(f"{'pillow':<16} wall {(time.perf_counter() - wall) * per:>7.2f} ms  cpu {(time.process_time() - cpu) * per:>7.2f} ms  {size} bytes")

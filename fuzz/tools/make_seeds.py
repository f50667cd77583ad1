#!/usr/bin/env python3
"""Writes the seed corpus under fuzz/seeds/<target>/ (committed; rerun to regenerate).

Images are written byte by byte with the standard library only: PNG through zlib, a baseline
JPEG with one-code Huffman tables (flat blocks), and a lossless WebP (VP8L) whose prefix codes
have one symbol each (a flat image). Request bodies come from the provider documents in
../shared/seeds/*.txt (their JSON examples) and the README's examples.
"""
import base64, json, os, random, struct, zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "seeds")


def png(width, height, color_type, bit_depth=8, fill=None):
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row_bytes = width * channels * bit_depth // 8
    rows = b"".join(b"\x00" + bytes((x * 37 + y * 11) % 256 for x in range(row_bytes)) for y in range(height))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def jpeg(width, height, components):
    """Baseline JPEG, no subsampling, every block flat (DC difference 0, then EOB)."""
    def seg(marker, data):
        return b"\xFF" + bytes([marker]) + struct.pack(">H", len(data) + 2) + data
    out = b"\xFF\xD8"
    out += seg(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    out += seg(0xDB, b"\x00" + bytes([1] * 64))
    sof = struct.pack(">BHHB", 8, height, width, components)
    for c in range(components):
        sof += bytes([c + 1, 0x11, 0])
    out += seg(0xC0, sof)
    one_code = bytes([1] + [0] * 15)  # one code of length 1
    out += seg(0xC4, b"\x00" + one_code + b"\x00")  # DC table 0: symbol 0 (no difference)
    out += seg(0xC4, b"\x10" + one_code + b"\x00")  # AC table 0: symbol 0x00 (end of block)
    sos = bytes([components]) + b"".join(bytes([c + 1, 0x00]) for c in range(components)) + b"\x00\x3F\x00"
    out += seg(0xDA, sos)
    blocks = ((width + 7) // 8) * ((height + 7) // 8) * components
    bits = 2 * blocks  # "0" for DC, "0" for EOB
    data = bytearray((bits + 7) // 8)
    if bits % 8:
        data[-1] = (1 << (8 - bits % 8)) - 1  # pad with ones
    return out + bytes(data) + b"\xFF\xD9"


class Bits:
    def __init__(self):
        self.value, self.count = 0, 0
    def put(self, value, n):
        self.value |= value << self.count
        self.count += n
    def bytes(self):
        return self.value.to_bytes((self.count + 7) // 8, "little")


def webp(width, height, argb, alpha):
    """Lossless WebP (VP8L): no transforms, no color cache, one-symbol prefix codes."""
    b = Bits()
    b.put(0x2F, 8)
    b.put(width - 1, 14)
    b.put(height - 1, 14)
    b.put(1 if alpha else 0, 1)
    b.put(0, 3)  # version
    b.put(0, 1)  # no transform
    b.put(0, 1)  # no color cache
    b.put(0, 1)  # no meta prefix codes
    a, r, g, bl = argb
    for symbol in (g, r, bl, a):
        b.put(1, 1); b.put(0, 1); b.put(1, 1); b.put(symbol, 8)  # simple, one symbol, 8 bits
    b.put(1, 1); b.put(0, 1); b.put(0, 1); b.put(0, 1)  # distance: simple, one 1-bit symbol 0
    payload = b.bytes()
    if len(payload) % 2:
        payload += b"\x00"
    chunk = b"VP8L" + struct.pack("<I", len(b.bytes())) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


IMAGES = {
    "rgb8.png": png(8, 8, 2),
    "rgba8.png": png(4, 3, 6),
    "gray1.png": png(9, 2, 0, bit_depth=1),
    "rgba16.png": png(2, 2, 6, bit_depth=16),
    "gray.jpg": jpeg(8, 8, 1),
    "color.jpg": jpeg(16, 16, 3),
    "flat.webp": webp(4, 4, (255, 200, 30, 60), False),
    "alpha.webp": webp(3, 5, (128, 10, 20, 30), True),
}


def data_url(name):
    mime = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}[name.rsplit(".", 1)[1]]
    return f"data:{mime};base64," + base64.b64encode(IMAGES[name]).decode()


def write(target, name, content):
    folder = os.path.join(ROOT, target)
    os.makedirs(folder, exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    with open(os.path.join(folder, name), "wb") as f:
        f.write(content)


def main():
    png_url = data_url("rgba8.png")
    bodies = {
        # seed 000: the Qwen edit body.
        "seed000_qwen_edit": {"model": "wanx-v1", "input": {"messages": [{"role": "user", "content": "Remove the background and replace it with a solid white backdrop."}]}},
        # seed 001: the OpenAI generation body and the Qwen generation body.
        "seed001_openai_generation": {"prompt": "A cute baby sea otter wearing a beret", "model": "dall-e-3", "size": "1024x1024"},
        "seed001_qwen_generation": {"model": "wanx-v1", "input": {"messages": [{"role": "user", "content": "A serene mountain lake at dawn, photorealistic."}]}},
        # seed 002: IG1's JSON edit, with a real image in the data URL.
        "seed002_ig1_edit": {"model": "qwen-image-edit", "images": [{"image_url": png_url}], "prompt": "Replace the iguana with a snake, keep the same neon theme and background.", "quality": "low", "size": "1280x720", "output_format": "png"},
        # seed 003's fields, as a JSON edit.
        "seed003_fields": {"image": png_url, "prompt": "在图片中添加一朵红色的玫瑰花", "background": "transparent", "input_fidelity": "high", "model": "gpt-image-1", "n": 1, "output_compression": 100, "output_format": "png", "partial_images": 0, "quality": "auto", "response_format": "url", "size": "1024x1024", "stream": False, "user": "<string>"},
        # README examples.
        "readme_qwen_parameters": {"model": "my-model", "input": {"messages": [{"role": "user", "content": "A serene mountain lake at dawn, photorealistic."}]}, "parameters": {"size": "768*512", "n": 2, "seed": 42, "negative_prompt": "people"}},
        "readme_qwen_parts": {"model": "my-model", "input": {"messages": [{"role": "user", "content": [{"image": data_url("flat.webp")}, {"text": "Remove the background and replace it with a solid white backdrop."}]}]}},
        "readme_qwen_inline": {"model": "m", "input": {"messages": [{"role": "user", "content": f"Make it blue {data_url('gray.jpg')} and like (https://example.com/style.png)."}]}},
        "readme_stream": {"model": "my-model", "prompt": "a lighthouse", "stream": True, "partial_images": 2},
        "readme_extensions": {"model": "m", "prompt": "x", "negative_prompt": "blur", "seed": 7, "steps": 4, "guidance_scale": 7.5, "strength": 0.6},
        "openai_mask_file_id": {"prompt": "p", "image": [{"file_id": "file-abc"}, {"image_url": {"url": "https://example.com/a.png"}}], "mask": {"image_url": png_url}},
        "edge_nulls": {"prompt": None, "model": None, "n": None, "input": None},
        "edge_unknown": {"prompt": "p", "unknown": 1, "parameters": {"watermark": True}},
    }
    for name, body in bodies.items():
        write("parse_json", name + ".json", json.dumps(body, ensure_ascii=False))

    refs = [png_url, data_url("color.jpg"), data_url("alpha.webp"), "data:image/png;base64," + base64.encodebytes(IMAGES["rgb8.png"]).decode(),
            base64.b64encode(IMAGES["rgb8.png"]).decode(), "https://example.com/a.png", "http://127.0.0.1:8080/x?y=1#z",
            "data:image/png,notbase64", "data:;base64,", "  https://[::1]/  "]
    for i, r in enumerate(refs):
        write("image_refs", f"ref{i}.txt", r)

    contents = [bodies["seed000_qwen_edit"]["input"]["messages"][0]["content"],
                bodies["readme_qwen_inline"]["input"]["messages"][0]["content"],
                f"<{png_url}>, then \"https://a.example/b.jpg\"; and [http://x/y.webp]. done",
                "data:image/ data:image/png;base64,@@ https:// http://"]
    for i, c in enumerate(contents):
        write("qwen_inline", f"content{i}.txt", c)

    for name, data in IMAGES.items():
        write("image_header", name, data)
        write("image_decode", name, data)

    rng = random.Random(9)  # `arbitrary` inputs: random bytes, deterministic
    for target in ("multipart", "sse_events"):
        for i in range(8):
            write(target, f"random{i}.bin", bytes(rng.randrange(256) for _ in range(rng.choice([16, 64, 256, 1024]))))
    # The multipart target also draws files from the image seeds.
    for name in ("rgb8.png", "gray.jpg", "flat.webp"):
        write("multipart", "img_" + name + ".bin", b"\x00\x01\x00\x02" + IMAGES[name])


if __name__ == "__main__":
    main()

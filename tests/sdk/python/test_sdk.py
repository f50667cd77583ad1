"""The official OpenAI Python SDK against a running Easel (started by the Rust test `sdk::python_sdk`).

Environment: EASEL_BASE_URL (ending in /v1), EASEL_FIXTURES (a folder with image.png, image2.png
and mask.png, 64x64), EASEL_MODEL (default test-image) and EASEL_SKIP (one per line: checks the
model cannot do, e.g. test_variations). Prints one line per check and exits non-zero on any failure.
"""

import base64
import os
import struct
import sys
import traceback
import urllib.request

import openai
from openai import OpenAI

BASE_URL = os.environ["EASEL_BASE_URL"]
FIXTURES = os.environ["EASEL_FIXTURES"]
MODEL = os.environ.get("EASEL_MODEL", "test-image")
SKIP = set(filter(None, os.environ.get("EASEL_SKIP", "").split("\n")))
client = OpenAI(base_url=BASE_URL, api_key="sk-anything", max_retries=0)


def fixture(name):
    return os.path.join(FIXTURES, name)


def png_size(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_models_list():
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids, ids
    assert client.models.retrieve(MODEL).id == MODEL


def test_generate():
    result = client.images.generate(model=MODEL, prompt="A cute baby sea otter", n=2, size="64x64", quality="low")
    assert len(result.data) == 2
    assert result.size == "64x64" and result.output_format == "png" and result.quality == "low"
    assert png_size(base64.b64decode(result.data[0].b64_json)) == (64, 64)
    assert result.usage.input_tokens_details.text_tokens > 0
    assert result.usage.total_tokens == result.usage.input_tokens + result.usage.output_tokens


def test_generate_webp_and_url():
    result = client.images.generate(model=MODEL, prompt="p", output_format="webp", output_compression=60, response_format="url")
    with urllib.request.urlopen(result.data[0].url) as response:
        assert response.headers["Content-Type"] == "image/webp"
        assert response.read()[:4] == b"RIFF"


def test_edit_one_image():
    with open(fixture("image.png"), "rb") as image:
        result = client.images.edit(model=MODEL, image=image, prompt="add a red hat")
    assert result.size == "64x64"
    assert png_size(base64.b64decode(result.data[0].b64_json)) == (64, 64)


def test_edit_raw_bytes():
    # Raw bytes go out as application/octet-stream with filename "upload".
    with open(fixture("image.png"), "rb") as image:
        result = client.images.edit(model=MODEL, image=image.read(), prompt="p", size="32x32")
    assert png_size(base64.b64decode(result.data[0].b64_json)) == (32, 32)


def test_edit_list_of_images_with_mask():
    with open(fixture("image.png"), "rb") as a, open(fixture("image2.png"), "rb") as b, open(fixture("mask.png"), "rb") as mask:
        result = client.images.edit(model=MODEL, image=[a, b], mask=mask, prompt="paint the right half", n=2)
    assert len(result.data) == 2
    assert result.usage.input_tokens_details.image_tokens > 0


def test_edit_with_mask():
    with open(fixture("image.png"), "rb") as image, open(fixture("mask.png"), "rb") as mask:
        result = client.images.edit(model=MODEL, image=image, mask=mask, prompt="paint the right half", size="64x64")
    assert png_size(base64.b64decode(result.data[0].b64_json)) == (64, 64)


def test_variations():
    with open(fixture("image.png"), "rb") as image:
        result = client.images.create_variation(model=MODEL, image=image, n=2, response_format="url")
    assert len(result.data) == 2 and all(d.url for d in result.data)


def test_stream_generate():
    stream = client.images.generate(model=MODEL, prompt="p", size="32x32", stream=True, partial_images=2)
    events = list(stream)
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"], [e.type for e in events]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    done = events[-1]
    assert done.size == "32x32" and done.output_format == "png" and done.usage.output_tokens > 0
    assert png_size(base64.b64decode(done.b64_json)) == (32, 32)


def test_stream_edit():
    with open(fixture("image.png"), "rb") as image:
        stream = client.images.edit(model=MODEL, image=image, prompt="p", stream=True, partial_images=1)
        types = [e.type for e in stream]
    assert types == ["image_edit.partial_image", "image_edit.completed"], types


def test_errors():
    try:
        client.images.generate(model="no-such-model", prompt="p")
        raise AssertionError("expected NotFoundError")
    except openai.NotFoundError as e:
        assert e.code == "model_not_found"
    try:
        client.images.generate(model=MODEL, prompt="p", size="1001x1001")
        raise AssertionError("expected BadRequestError")
    except openai.BadRequestError as e:
        assert e.param == "size" and e.code == "invalid_value", (e.param, e.code)
    try:
        client.images.generate(model=MODEL, prompt="p", extra_body={"colour": "red"})
        raise AssertionError("expected BadRequestError")
    except openai.BadRequestError as e:
        assert e.code == "unknown_parameter" and e.param == "colour"


def main():
    tests = [(n, fn) for n, fn in globals().items() if n.startswith("test_") and callable(fn) and n not in SKIP]
    failed = 0
    for name, fn in tests:
        try:
            fn()
            print(f"PASS {name}")
        except Exception:  # noqa: BLE001 - report every failure, then exit non-zero
            failed += 1
            print(f"FAIL {name}")
            traceback.print_exc()
    print(f"python sdk ({MODEL}): {len(tests) - failed} passed, {failed} failed, {len(SKIP)} skipped")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

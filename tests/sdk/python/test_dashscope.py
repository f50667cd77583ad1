"""Alibaba's `dashscope` Python SDK, unmodified, against a running Easel (started by the Rust test
`dashscope_routes::python_dashscope_sdk`): ImageSynthesis.async_call + wait, ImageSynthesis.call
(text2image and image2image), cancel, list, MultiModalConversation.call (Qwen-Image and
Qwen-Image-Edit style), and DashScope's error answers.

Environment: EASEL_DASHSCOPE_URL (Easel's address ending in /api/v1), EASEL_FIXTURES (a folder with
image.png, 64x64), EASEL_MODEL. Prints one line per check and exits non-zero on any failure.
"""

import base64
import os
import struct
import sys
import time
import traceback
import urllib.request

import dashscope
from dashscope import ImageSynthesis, MultiModalConversation

dashscope.base_http_api_url = os.environ["EASEL_DASHSCOPE_URL"]
dashscope.api_key = "sk-anything"
FIXTURES = os.environ["EASEL_FIXTURES"]
MODEL = os.environ["EASEL_MODEL"]


def image_data_url():
    with open(os.path.join(FIXTURES, "image.png"), "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode()


def png_size_at(url):
    with urllib.request.urlopen(url) as response:
        data = response.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_async_call_and_wait():
    task = ImageSynthesis.async_call(model=MODEL, prompt="a lighthouse at dusk", n=1, size="64*64", seed=7)
    assert task.status_code == 200, task
    assert task.output.task_status == "PENDING" and task.output.task_id, task
    fetched = ImageSynthesis.fetch(task)
    assert fetched.status_code == 200 and fetched.output.task_id == task.output.task_id, fetched
    result = ImageSynthesis.wait(task)
    assert result.status_code == 200 and result.output.task_status == "SUCCEEDED", result
    assert result.usage.image_count == 1, result
    assert result.output.task_metrics == {"TOTAL": 1, "SUCCEEDED": 1, "FAILED": 0}, result
    assert png_size_at(result.output.results[0].url) == (64, 64)
    canceled = ImageSynthesis.cancel(task)
    assert canceled.status_code == 400 and canceled.code == "UnsupportedOperation", canceled


def test_call_text2image():
    result = ImageSynthesis.call(model=MODEL, prompt="a red kite", n=2, size="64*48")
    assert result.status_code == 200 and result.output.task_status == "SUCCEEDED", result
    assert len(result.output.results) == 2 and result.usage.image_count == 2, result
    assert png_size_at(result.output.results[1].url) == (64, 48)


def test_call_image2image():
    result = ImageSynthesis.call(
        model=MODEL,
        prompt="make it snow",
        task="image2image",
        function="description_edit",
        base_image_url=image_data_url(),
        n=1,
    )
    assert result.status_code == 200 and result.output.task_status == "SUCCEEDED", result
    assert png_size_at(result.output.results[0].url) == (64, 64)


def test_list():
    task = ImageSynthesis.async_call(model=MODEL, prompt="a list of one", n=1, size="64*64")
    assert ImageSynthesis.wait(task).output.task_status == "SUCCEEDED"
    page = ImageSynthesis.list(page_no=1, page_size=1)
    assert page.status_code == 200 and page.request_id, page
    body = page.output
    assert body["page_no"] == 1 and body["page_size"] == 1, page
    assert body["total"] >= 1 and body["total_page"] == body["total"], page
    newest = body["data"][0]
    assert newest["task_id"] == task.output.task_id and newest["status"] == "SUCCEEDED", page
    assert newest["gmt_create"] <= newest["end_time"], page
    # The second it was submitted: both ends of the range are inclusive.
    second = time.strftime("%Y%m%d%H%M%S", time.gmtime(newest["gmt_create"] // 1000))
    filtered = ImageSynthesis.list(
        start_time=second, end_time=second, model_name=newest["model_name"], status="SUCCEEDED", page_size=100
    )
    assert filtered.status_code == 200, filtered
    assert task.output.task_id in [t["task_id"] for t in filtered.output["data"]], filtered
    none = ImageSynthesis.list(status="CANCELED", model_name=newest["model_name"], start_time=second)
    assert none.status_code == 200 and none.output["data"] == [] and none.output["total"] == 0, none
    bad = ImageSynthesis.list(page_size=0)
    assert bad.status_code == 400 and bad.code == "InvalidParameter" and "page_size" in bad.message, bad


def test_multimodal_generation():
    messages = [{"role": "user", "content": [{"text": "a cat on a windowsill"}]}]
    result = MultiModalConversation.call(model=MODEL, messages=messages, n=1, size="64*64")
    assert result.status_code == 200, result
    content = result.output.choices[0].message.content
    assert len(content) == 1 and result.usage.image_count == 1, result
    assert png_size_at(content[0]["image"]) == (64, 64)


def test_multimodal_edit():
    messages = [{"role": "user", "content": [{"image": image_data_url()}, {"text": "add a red hat"}]}]
    result = MultiModalConversation.call(model=MODEL, messages=messages)
    assert result.status_code == 200, result
    assert png_size_at(result.output.choices[0].message.content[0]["image"]) == (64, 64)


def test_errors():
    missing = ImageSynthesis.async_call(model="no-such-model", prompt="x")
    assert missing.status_code == 404 and missing.code == "ModelNotFound", missing
    assert missing.request_id, missing
    messages = [{"role": "user", "content": [{"text": "x"}]}]
    bad = MultiModalConversation.call(model=MODEL, messages=messages, size="huge")
    assert bad.status_code == 400 and bad.code == "InvalidParameter", bad
    assert "parameters.size" in bad.message, bad
    unknown = ImageSynthesis.fetch("no-such-task")
    assert unknown.status_code == 404 and unknown.code == "NotFound", unknown


def main():
    tests = [(n, fn) for n, fn in globals().items() if n.startswith("test_") and callable(fn)]
    failed = 0
    for name, fn in tests:
        try:
            fn()
            print(f"PASS {name}")
        except Exception:  # noqa: BLE001 - report every failure, then exit non-zero
            failed += 1
            print(f"FAIL {name}")
            traceback.print_exc()
    print(f"dashscope sdk {dashscope.version.__version__} ({MODEL}): {len(tests) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

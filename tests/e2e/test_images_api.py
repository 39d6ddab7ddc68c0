"""End to end: the real server (subprocess) spawns the real diffusers backend (subprocess, real gRPC)."""

from __future__ import annotations

import base64
import io
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.fixtures.server import children_of, pid_alive

pytestmark = pytest.mark.e2e


def generate(server, **body) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/images/generations", json=body, timeout=300)


def images_of(response: httpx.Response) -> list[bytes]:
    assert response.status_code == 200, response.text
    return [base64.b64decode(item["b64_json"]) for item in response.json()["data"]]


def ps(server) -> dict[str, dict]:
    return {m["name"]: m for m in httpx.get(f"{server.base_url}/api/ps", timeout=10).json()["models"]}


def test_json_request_returns_png_of_requested_size(server):
    for size in ("64x64", "48x32"):
        [png] = images_of(generate(server, model="shapes", prompt="a red circle", size=size, seed=1))
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG"
        assert f"{image.width}x{image.height}" == size


def test_openai_sdk_generates_png(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="not-needed")
    result = client.images.generate(
        model="shapes", prompt="a blue square", size="64x64", response_format="b64_json", extra_body={"seed": 3}
    )
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    assert (image.format, image.size) == ("PNG", (64, 64))


def test_seed_is_reproducible_and_seeds_differ(server):
    first = images_of(generate(server, model="shapes", prompt="a green triangle", seed=42))
    again = images_of(generate(server, model="shapes", prompt="a green triangle", seed=42))
    other = images_of(generate(server, model="shapes", prompt="a green triangle", seed=43))
    assert first == again
    assert first != other


def test_n3_returns_three_distinct_images_from_one_backend_call(server):
    generate(server, model="shapes", prompt="warm up", seed=0)
    calls_before = ps(server)["shapes"]["generate_calls"]
    response = generate(server, model="shapes", prompt="a yellow circle", n=3, seed=7)
    pngs = images_of(response)
    assert len(pngs) == 3 and len(set(pngs)) == 3
    assert [item["seed"] for item in response.json()["data"]] == [7, 8, 9]
    assert ps(server)["shapes"]["generate_calls"] == calls_before + 1
    # image i of a seeded batch is image 0 of a request seeded seed+i
    [single] = images_of(generate(server, model="shapes", prompt="a yellow circle", seed=8))
    a = np.asarray(Image.open(io.BytesIO(single)).convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(io.BytesIO(pngs[1])).convert("RGB"), dtype=np.int16)
    assert np.abs(a - b).max() <= 2


def test_pipe_in_prompt_is_the_negative_prompt(server):
    split = images_of(generate(server, model="shapes", prompt="a red square|a blue circle", seed=5))
    explicit = images_of(
        generate(server, model="shapes", prompt="a red square", negative_prompt="a blue circle", seed=5)
    )
    plain = images_of(generate(server, model="shapes", prompt="a red square", seed=5))
    assert split == explicit
    assert split != plain


def test_url_response_is_served_by_this_server(server):
    response = generate(server, model="shapes", prompt="a purple circle", response_format="url", seed=2)
    assert response.status_code == 200, response.text
    url = response.json()["data"][0]["url"]
    assert url.startswith(server.base_url + "/generated-images/")
    fetched = httpx.get(url, timeout=10)
    assert fetched.status_code == 200
    assert Image.open(io.BytesIO(fetched.content)).format == "PNG"
    assert httpx.get(f"{server.base_url}/generated-images/../../etc/passwd", timeout=10).status_code == 404


def test_output_format_jpeg_and_webp(server):
    [jpeg] = images_of(generate(server, model="shapes", prompt="a red circle", output_format="jpeg", seed=1))
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    [webp] = images_of(
        generate(server, model="shapes", prompt="a red circle", output_format="webp", output_compression=50, seed=1)
    )
    assert Image.open(io.BytesIO(webp)).format == "WEBP"


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": "x", "size": "1024x"}, "size"),
        ({"prompt": "x", "size": "0x0"}, "size"),
        ({"prompt": "x", "size": "100000x100000"}, "size"),
        ({"prompt": "x", "size": "63x64"}, "size"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "n": 11}, "n"),
        ({}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x", "response_format": "gif"}, "response_format"),
        ({"prompt": "x", "seed": -1}, "seed"),
    ],
)
def test_bad_input_is_400_with_openai_envelope(server, body, param):
    response = generate(server, model="shapes", **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


def test_malformed_json_is_400(server):
    response = httpx.post(
        f"{server.base_url}/v1/images/generations",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400
    assert "error" in response.json()


def test_server_still_serves_after_bad_requests(server):
    for size in ("1024x", "0x0", "100000x100000"):
        assert generate(server, model="shapes", prompt="x", size=size).status_code == 400
    assert httpx.get(f"{server.base_url}/health", timeout=5).status_code == 200
    assert len(images_of(generate(server, model="shapes", prompt="a red circle", seed=1))) == 1


def test_unknown_model_is_404_with_install_hint(server):
    response = generate(server, model="no-such-model", prompt="x")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found"
    assert "models apply" in error["message"]


def test_model_list_reports_models_backends_and_broken_files(server):
    body = httpx.get(f"{server.base_url}/v1/models", timeout=30).json()
    ids = {m["id"] for m in body["data"]}
    assert {"shapes", "random-keepalive", "random-concurrent", "random-crash"} <= ids
    assert "broken" not in ids
    assert any("broken.yaml: step:" in e for e in body["errors"])
    diffusers = next(b for b in body["backends"] if b["name"] == "diffusers")
    assert diffusers["usable"] is True


def test_stream_sends_progress_then_result(server):
    events: list[tuple[str, str]] = []
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/images/generations",
        json={"model": "shapes", "prompt": "a red circle", "stream": True, "seed": 1, "num_inference_steps": 5},
        timeout=120,
    ) as response:
        event = ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                events.append((event, line[5:].strip()))
    names = [name for name, _ in events]
    assert names.count("progress") == 5
    assert names[-2:] == ["image_generation.completed", "done"]


def test_concurrent_first_requests_start_one_backend(server):
    results: list[httpx.Response] = []

    def worker(seed: int) -> None:
        results.append(generate(server, model="random-concurrent", prompt="x", seed=seed))

    threads = [threading.Thread(target=worker, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200, 200]
    assert ps(server)["random-concurrent"]["starts"] == 1
    backend_children = [
        pid for pid in children_of(server.proc.pid) if "backend.py" in Path(f"/proc/{pid}/cmdline").read_text()
    ]
    assert len(backend_children) == len(ps(server))


def test_backend_killed_mid_request_gives_502_then_recovers(server):
    assert generate(server, model="random-crash", prompt="x", seed=1).status_code == 200
    pid = ps(server)["random-crash"]["pid"]
    outcome: dict = {}

    def slow_request() -> None:
        started = time.monotonic()
        outcome["response"] = generate(
            server, model="random-crash", prompt="x", size="512x512", num_inference_steps=200, seed=1
        )
        outcome["finished"] = time.monotonic()
        outcome["started"] = started

    thread = threading.Thread(target=slow_request)
    thread.start()
    deadline = time.monotonic() + 30
    while not ps(server)["random-crash"]["busy"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=60)
    response = outcome["response"]
    assert response.status_code == 502, response.text
    assert response.json()["error"]["type"] == "server_error"
    assert outcome["finished"] - killed_at < 5
    # the next request restarts the backend and succeeds
    assert generate(server, model="random-crash", prompt="x", seed=1).status_code == 200
    assert ps(server)["random-crash"]["pid"] != pid


def test_idle_model_unloads_after_keep_alive(server):
    assert generate(server, model="random-keepalive", prompt="x", seed=1).status_code == 200
    pid = ps(server)["random-keepalive"]["pid"]
    deadline = time.monotonic() + 15
    while "random-keepalive" in ps(server):
        assert time.monotonic() < deadline, "model was not unloaded after its 1s keep-alive"
        time.sleep(0.25)
    deadline = time.monotonic() + 10
    while pid_alive(pid):
        assert time.monotonic() < deadline, "backend process still alive after unload"
        time.sleep(0.1)


def test_stop_unloads_a_model(server):
    assert generate(server, model="random-concurrent", prompt="x", seed=1).status_code == 200
    response = httpx.post(f"{server.base_url}/api/stop", json={"model": "random-concurrent"}, timeout=30)
    assert response.json() == {"model": "random-concurrent", "unloaded": True}
    assert "random-concurrent" not in ps(server)


def test_host_never_imports_torch(server):
    assert generate(server, model="shapes", prompt="a red circle", seed=1).status_code == 200
    maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert "libtorch" not in maps and "torch/lib" not in maps
    backend_pid = ps(server)["shapes"]["pid"]
    assert "libtorch" in Path(f"/proc/{backend_pid}/maps").read_text()  # the check can see torch


def test_edits_runs_img2img_on_the_uploaded_image(server):
    source = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(source, format="PNG")

    def edit(**fields):
        files = {"image": ("src.png", source.getvalue(), "image/png")}
        data = {"model": "shapes", "prompt": "a blue square", "seed": "3", **fields}
        return httpx.post(f"{server.base_url}/v1/images/edits", data=data, files=files, timeout=120)

    response = edit(strength="0.5")
    [png] = images_of(response)
    assert Image.open(io.BytesIO(png)).size == (64, 48)  # the source's size by default
    assert images_of(edit(strength="0.5")) == [png]
    assert images_of(edit(strength="0.9")) != [png]
    bad = edit(strength="2")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "strength"
    missing = httpx.post(f"{server.base_url}/v1/images/edits", data={"prompt": "x", "model": "shapes"}, timeout=30)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "image"

"""The MLX backend: where mlx imports, real gRPC generation matching diffusers; elsewhere a refusal and skips."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from localhost_ai.proto import backend_pb2 as pb

REPO = Path(__file__).resolve().parents[2]
MLX = REPO / "backends" / "mlx"
SIZE, STEPS, GUIDANCE = 32, 4, 7.5
PROMPT = "a blue circle and a green square"


def probe() -> dict:
    out = subprocess.run([sys.executable, str(MLX / "probe.py")], capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout)


def require_mlx() -> None:
    result = probe()
    if not result["usable"]:
        print(f"\nskipping: {result['reason']}")
        pytest.skip(result["reason"])


def test_probe_answers_fast_with_a_reason():
    start = time.perf_counter()
    result = probe()
    elapsed = time.perf_counter() - start
    print(f"\nmlx probe: {result} ({elapsed:.2f} s)")
    assert isinstance(result["usable"], bool) and result["reason"]
    assert elapsed < 2.0  # interpreter start included


def test_backend_refuses_to_start_with_the_probe_reason():
    result = probe()
    if result["usable"]:
        pytest.skip("MLX is usable here; the refusal path does not apply")
    proc = subprocess.run(
        [sys.executable, str(MLX / "backend.py"), "--addr", "127.0.0.1:0", "--parent-pid", str(os.getpid())],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 3
    assert "LOCALHOST_AI_BACKEND_PORT" not in proc.stdout
    assert result["reason"] in proc.stderr


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    require_mlx()
    pytest.importorskip("diffusers")
    from tests.fixtures.tiny_pipeline import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("mlx-models") / "tiny", sample_size=SIZE)


@pytest.fixture(scope="module")
def backend(tiny_model):
    """The real backend process; yields a BackendStub with the tiny model loaded."""
    import grpc

    from localhost_ai.proto import backend_pb2_grpc as pb_grpc

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(MLX / "backend.py"), "--addr", "127.0.0.1:0", "--parent-pid", str(os.getpid())]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = proc.stdout.readline()  # the SDK prints the port before anything else
        assert line.startswith("LOCALHOST_AI_BACKEND_PORT "), f"unexpected first line {line!r}"
        channel = grpc.insecure_channel(f"127.0.0.1:{int(line.split()[1])}")
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = pb_grpc.BackendStub(channel)
        start = time.perf_counter()
        result = stub.LoadModel(pb.ModelOptions(Model="tiny", ModelPath=str(tiny_model), CFGScale=GUIDANCE), timeout=60)
        print(f"\nLoadModel: {time.perf_counter() - start:.2f} s")
        assert result.success, result.message
        yield stub
        channel.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def generate(stub, **fields) -> tuple[list[pb.Progress], list[pb.EncodedImage]]:
    request = pb.GenerateImagesRequest(
        positive_prompt=PROMPT, width=SIZE, height=SIZE, steps=STEPS, seed=11, n=1, guidance_scale=GUIDANCE
    )
    for key, value in fields.items():
        setattr(request, key, value)
    progress, images = [], []
    for event in stub.GenerateImages(request, timeout=120):
        kind = event.WhichOneof("event")
        (progress if kind == "progress" else images).append(getattr(event, kind))
    return progress, images


def pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)


def compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    mse = float(((a - b) ** 2).mean())
    return float(np.abs(a - b).mean()), (10 * np.log10(255.0**2 / mse) if mse else float("inf"))


def test_batch_of_two_streams_progress_then_pngs(backend):
    start = time.perf_counter()
    progress, images = generate(backend, n=2, seed=3)
    print(f"\nmlx n=2 {SIZE}x{SIZE} {STEPS} steps over gRPC: {time.perf_counter() - start:.2f} s")
    assert [(p.step, p.total) for p in progress] == [(i, STEPS) for i in range(1, STEPS + 1)]
    assert [(im.index, im.seed, im.mime_type) for im in images] == [(0, 3, "image/png"), (1, 4, "image/png")]
    assert all(im.data.startswith(b"\x89PNG") and (im.width, im.height) == (SIZE, SIZE) for im in images)
    assert compare(pixels(images[0].data), pixels(images[1].data))[0] > 1.0  # different seeds, different images


def test_matches_diffusers_pipeline(backend, tiny_model):
    import torch
    from diffusers import StableDiffusionPipeline

    _, images = generate(backend, n=2, seed=21, negative_prompt="blurry")
    torch.set_num_threads(1)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        [PROMPT] * 2,
        negative_prompt=["blurry"] * 2,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        width=SIZE,
        height=SIZE,
        generator=[torch.Generator("cpu").manual_seed(s) for s in (21, 22)],
    ).images
    for got, want in zip(images, expected, strict=True):
        mad, psnr = compare(pixels(got.data), np.asarray(want, dtype=np.float64))
        print(f"\nseed {got.seed}: mlx vs diffusers mean abs diff {mad:.4f}/255, PSNR {psnr:.1f} dB")
        assert mad < 2.0 or psnr >= 35.0


def test_img2img_runs_fewer_steps(backend):
    _, source = generate(backend)
    progress, images = generate(backend, src_image=source[0].data, strength=0.5)
    assert progress[-1].total == STEPS // 2 and len(images) == 1 and images[0].width == SIZE


def test_bad_model_folder_fails_cleanly(backend, tmp_path):
    result = backend.LoadModel(pb.ModelOptions(Model="nope", ModelPath=str(tmp_path)), timeout=30)
    assert not result.success and "model_index.json" in result.message

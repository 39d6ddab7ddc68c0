"""The ONNX backend for real: convert a tiny model, run backends/onnx/backend.py over gRPC, compare with diffusers."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from localhost_ai.proto import backend_pb2 as pb
from localhost_ai.proto import backend_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow
pytest.importorskip("onnxruntime")
pytest.importorskip("diffusers")

REPO = Path(__file__).resolve().parents[2]
SIZE, STEPS, GUIDANCE = 32, 4, 7.5
PROMPT = "a blue circle and a green square"


@pytest.fixture(scope="session")
def onnx_models(tmp_path_factory) -> Path:
    """A models dir with a tiny diffusers model, its ONNX conversion and an int8 one, via convert_onnx."""
    from localhost_ai.convert_cli import convert_onnx
    from localhost_ai.settings import Settings
    from tests.fixtures.tiny_pipeline import build_tiny_pipeline

    models = tmp_path_factory.mktemp("onnx-models")
    build_tiny_pipeline(models / "tiny", sample_size=SIZE)
    source = {"name": "tiny", "backend": "diffusers", "parameters": {"model": "tiny"}, "step": STEPS}
    source |= {"cfg_scale": GUIDANCE, "size": f"{SIZE}x{SIZE}", "diffusers": {"scheduler_type": "ddim"}}
    (models / "tiny.yaml").write_text(yaml.safe_dump(source))
    settings = Settings(models_dir=models, backend_python=sys.executable)
    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:  # two subprocesses: the int8 export overlaps the fp32 one
        fp32 = pool.submit(convert_onnx, settings, "tiny")
        int8 = pool.submit(convert_onnx, settings, "tiny", new_name="tiny-int8", int8=True)
        fp32.result(), int8.result()
    print(f"\nconverted fp32 + int8 in {time.perf_counter() - start:.1f} s")
    return models


@pytest.fixture(scope="session")
def backend(onnx_models):
    """The real backend process; yields a BackendStub."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(REPO / "backends" / "onnx" / "backend.py"), "--addr", "127.0.0.1:0"]
    proc = subprocess.Popen(
        [*cmd, "--parent-pid", str(os.getpid())], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    try:
        line = proc.stdout.readline()  # the SDK prints the port before anything else
        assert line.startswith("LOCALHOST_AI_BACKEND_PORT "), f"unexpected first line {line!r}"
        channel = grpc.insecure_channel(f"127.0.0.1:{int(line.split()[1])}")
        grpc.channel_ready_future(channel).result(timeout=30)
        yield pb_grpc.BackendStub(channel)
        channel.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def load(stub, models: Path, name: str) -> pb.Result:
    return stub.LoadModel(
        pb.ModelOptions(Model=name, ModelPath=str(models / name), Threads=2, CFGScale=GUIDANCE), timeout=60
    )


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


def test_probe_is_fast_and_usable():
    start = time.perf_counter()
    out = subprocess.run([sys.executable, str(REPO / "backends" / "onnx" / "probe.py")], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    result = json.loads(out.stdout)
    print(f"\nprobe: {result} in {elapsed:.2f} s")
    assert result["usable"] is True and elapsed < 2.0  # < 0.5 s of its own; interpreter start is the rest


def test_converted_yaml(onnx_models):
    config = yaml.safe_load((onnx_models / "tiny-onnx.yaml").read_text())
    assert config["backend"] == "onnx" and config["parameters"]["model"] == "tiny-onnx"
    assert config["step"] == STEPS and config["cfg_scale"] == GUIDANCE and config["size"] == f"{SIZE}x{SIZE}"
    assert config["diffusers"]["scheduler_type"] == "ddim"
    manifest = json.loads((onnx_models / "tiny-onnx" / "onnx_model.json").read_text())
    assert manifest["vae_scale_factor"] == 8 and manifest["precision"] == "fp32"
    assert json.loads((onnx_models / "tiny-int8" / "onnx_model.json").read_text())["precision"] == "int8"


def test_health_load_and_batch_of_two(backend, onnx_models):
    assert backend.Health(pb.HealthMessage(), timeout=10).message == b"OK"
    result = load(backend, onnx_models, "tiny-onnx")
    assert result.success, result.message
    start = time.perf_counter()
    progress, images = generate(backend, n=2, seed=3)
    print(f"\nn=2 {SIZE}x{SIZE} {STEPS} steps over gRPC: {time.perf_counter() - start:.2f} s")
    assert [(p.step, p.total) for p in progress] == [(i, STEPS) for i in range(1, STEPS + 1)]
    assert [(im.index, im.seed, im.mime_type) for im in images] == [(0, 3, "image/png"), (1, 4, "image/png")]
    assert all(im.data.startswith(b"\x89PNG") and (im.width, im.height) == (SIZE, SIZE) for im in images)
    assert compare(pixels(images[0].data), pixels(images[1].data))[0] > 1.0  # different seeds, different images


def test_matches_diffusers_pipeline(backend, onnx_models):
    import torch
    from diffusers import StableDiffusionPipeline

    assert load(backend, onnx_models, "tiny-onnx").success
    _, images = generate(backend, n=2, seed=21, negative_prompt="blurry")
    torch.set_num_threads(1)
    pipe = StableDiffusionPipeline.from_pretrained(onnx_models / "tiny", local_files_only=True)
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
        print(f"\nseed {got.seed}: onnx vs diffusers mean abs diff {mad:.4f}/255, PSNR {psnr:.1f} dB")
        assert mad < 2.0 or psnr >= 35.0


def test_negative_prompt_changes_the_image(backend, onnx_models):
    assert load(backend, onnx_models, "tiny-onnx").success
    _, plain = generate(backend)
    _, negative = generate(backend, negative_prompt="low quality, blurry, watermark")
    _, again = generate(backend)
    assert plain[0].data == again[0].data  # same request, same bytes
    mad, _ = compare(pixels(plain[0].data), pixels(negative[0].data))
    print(f"\nnegative prompt moved pixels by {mad:.2f}/255 on average")
    assert mad > 0.5


def test_img2img_runs_fewer_steps(backend, onnx_models):
    assert load(backend, onnx_models, "tiny-onnx").success
    _, source = generate(backend)
    progress, images = generate(backend, src_image=source[0].data, strength=0.5)
    assert progress[-1].total == STEPS // 2 and len(images) == 1 and images[0].width == SIZE


def test_int8_model_loads_and_generates(backend, onnx_models):
    result = load(backend, onnx_models, "tiny-int8")
    assert result.success, result.message
    _, images = generate(backend, seed=11)
    assert len(images) == 1 and images[0].data.startswith(b"\x89PNG")
    assert load(backend, onnx_models, "tiny-onnx").success
    _, fp32 = generate(backend, seed=11)
    mad, psnr = compare(pixels(images[0].data), pixels(fp32[0].data))
    print(f"\nint8 vs fp32: mean abs diff {mad:.2f}/255, PSNR {psnr:.1f} dB")


def test_bad_model_folder_fails_cleanly(backend, onnx_models):
    result = backend.LoadModel(pb.ModelOptions(Model="nope", ModelPath=str(onnx_models / "tiny")), timeout=30)
    assert not result.success and "onnx_model.json" in result.message
    assert load(backend, onnx_models, "tiny-onnx").success


def test_rng_matches_torch():
    import torch

    from backends.onnx.schedulers import TorchCompatibleRNG

    for shape, seed in [((1, 4, 4, 4), 0), ((1, 4, 5, 7), 42), ((1, 4, 64, 48), 2**40 + 7), ((1, 4, 3, 3), -5)]:
        want = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed)).numpy()
        np.testing.assert_allclose(TorchCompatibleRNG(seed).randn(shape), want, atol=1e-5)
    rng, gen = TorchCompatibleRNG(9), torch.Generator("cpu").manual_seed(9)
    for shape in [(1, 4, 5, 7), (1, 4, 8, 8)]:  # consecutive draws stay in step (ancestral samplers, img2img)
        np.testing.assert_allclose(rng.randn(shape), torch.randn(shape, generator=gen).numpy(), atol=1e-5)

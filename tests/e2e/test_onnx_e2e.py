"""The ONNX backend end to end: `localhost-ai convert onnx`, then the same HTTP API as the diffusers backend."""

from __future__ import annotations

import base64
import io
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.fixtures.server import REPO

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def onnx_model(server, e2e_models_dir) -> str:
    """Convert the `shapes` model with the CLI into the running server's models dir."""
    result = subprocess.run(
        [sys.executable, "-m", "localhost_ai", "convert", "onnx", "shapes", "--models-dir", str(e2e_models_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert (e2e_models_dir / "shapes-onnx.yaml").is_file()
    return "shapes-onnx"


def generate(server, **body) -> list[np.ndarray]:
    response = httpx.post(f"{server.base_url}/v1/images/generations", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))).convert("RGB"), dtype=np.float64)
        for d in response.json()["data"]
    ]


def test_onnx_model_is_listed_with_a_usable_backend(server, onnx_model):
    models = {m["id"]: m for m in httpx.get(f"{server.base_url}/v1/models", timeout=30).json()["data"]}
    assert models[onnx_model]["backend"] == "onnx"
    assert models[onnx_model]["backend_usable"] is True


def test_onnx_generates_like_the_diffusers_backend(server, onnx_model):
    body = {"prompt": "a red circle|a blue square", "seed": 11, "size": "64x64", "num_inference_steps": 8}
    [onnx] = generate(server, model=onnx_model, **body)
    [torch] = generate(server, model="shapes", **body)
    mse = np.mean((onnx - torch) ** 2)
    psnr = float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)
    print(f"onnx vs diffusers over HTTP: mean abs diff {np.abs(onnx - torch).mean():.4f}/255, PSNR {psnr:.1f} dB")
    assert np.abs(onnx - torch).mean() < 2 or psnr >= 35


def test_onnx_batch_seed_and_sizes(server, onnx_model):
    batch = generate(server, model=onnx_model, prompt="a green square", n=2, seed=3, size="48x32")
    assert len(batch) == 2 and batch[0].shape == (32, 48, 3)
    assert not np.array_equal(batch[0], batch[1])
    [again] = generate(server, model=onnx_model, prompt="a green square", seed=3, size="48x32")
    assert np.abs(again - batch[0]).max() <= 2
    response = httpx.post(
        f"{server.base_url}/v1/images/generations", json={"model": onnx_model, "prompt": "x", "size": "0x0"}, timeout=30
    )
    assert response.status_code == 400

"""The MLX backend through the HTTP API, on the same weights as the diffusers backend (skips where MLX can't run)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.e2e.test_onnx_e2e import generate
from tests.fixtures.server import REPO

pytestmark = pytest.mark.e2e


def mlx_status() -> dict:
    out = subprocess.run([sys.executable, str(REPO / "backends" / "mlx" / "probe.py")], capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_mlx_generates_like_the_diffusers_backend(server, e2e_models_dir):
    status = mlx_status()
    if not status["usable"]:
        print(f"MLX backend not usable here: {status['reason']}")
        pytest.skip(status["reason"])
    shapes = (e2e_models_dir / "shapes.yaml").read_text()
    (e2e_models_dir / "shapes-mlx.yaml").write_text(
        shapes.replace("name: shapes", "name: shapes-mlx").replace("backend: diffusers", "backend: mlx")
    )
    body = {"prompt": "a red circle|a blue square", "seed": 11, "size": "64x64", "num_inference_steps": 8}
    [mlx] = generate(server, model="shapes-mlx", **body)
    [torch] = generate(server, model="shapes", **body)
    diff = abs(mlx - torch).mean()
    print(f"mlx vs diffusers over HTTP: mean abs diff {diff:.4f}/255")
    assert diff < 2

"""The README's first command works as written: `./dev demo` generates with the embedded model."""

from __future__ import annotations

import os
import subprocess

import pytest
from PIL import Image

from tests.fixtures.server import REPO

pytestmark = pytest.mark.e2e


@pytest.mark.skipif(not (REPO / "models" / "tiny-shapes" / "model_index.json").is_file(), reason="no embedded model")
def test_dev_demo_generates_with_the_embedded_model(tmp_path):
    assert "./dev demo" in (REPO / "README.md").read_text()
    out = tmp_path / "demo.png"
    env = {**os.environ, "LOCALHOST_AI_SKIP_SETUP": "1", "LOCALHOST_AI_PORT": "1"}  # port 1: start in-process
    result = subprocess.run(
        ["./dev", "demo", "a red circle on a white background", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Generating: step" in result.stderr
    assert f"Image saved to: {out}" in result.stdout
    assert Image.open(out).size == (64, 64)

"""The CLI end to end: `localhost-ai run` with an in-process server and against a running one; ps and stop."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from tests.fixtures.server import REPO

pytestmark = pytest.mark.e2e


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "localhost_ai", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_run_starts_a_server_in_process_and_saves_a_png(tmp_path, e2e_models_dir):
    out = tmp_path / "circle.png"
    result = cli(
        "run",
        "shapes",
        "a red circle",
        "--steps",
        "3",
        "--seed",
        "4",
        "-o",
        str(out),
        "--models-dir",
        str(e2e_models_dir),
        "--port",
        "1",  # nothing listens on port 1: start in-process
    )
    assert result.returncode == 0, result.stderr
    assert "Generating: step 3/3" in result.stderr
    assert f"Image saved to: {out}" in result.stdout
    assert Image.open(out).size == (64, 64)


def test_run_ps_and_stop_against_a_running_server(tmp_path, server):
    port = str(server.port)
    out = tmp_path / "square.png"
    result = cli("run", "shapes", "a blue square", "--size", "32x32", "-o", str(out), "--port", port)
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (32, 32)
    ps = cli("ps", "--port", port)
    assert "shapes" in ps.stdout
    stop = cli("stop", "shapes", "--port", port)
    assert "shapes: unloaded" in stop.stdout
    missing = cli("run", "no-such-model", "x", "--port", port)
    assert missing.returncode != 0 and "not installed" in missing.stderr


def test_backends_command_reports_usability():
    result = cli("backends")
    assert result.returncode == 0, result.stderr
    assert "diffusers" in result.stdout and "usable" in result.stdout

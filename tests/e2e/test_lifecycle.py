"""Server lifecycle end to end: shutdown leaves no backend behind; one model is the default model."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.fixtures.server import ServerProcess, pid_alive

pytestmark = pytest.mark.e2e


def test_shutdown_stops_every_backend_and_single_model_is_default(tmp_path, random_pipeline_dir):
    (tmp_path / "only.yaml").write_text(
        f"name: only\nparameters:\n  model: {random_pipeline_dir}\nstep: 2\nsize: 64x64\n"
    )
    server = ServerProcess(tmp_path).start()
    try:
        response = httpx.post(f"{server.base_url}/v1/images/generations", json={"prompt": "x"}, timeout=120)
        assert response.status_code == 200, response.text
        [model] = httpx.get(f"{server.base_url}/api/ps", timeout=10).json()["models"]
        backend_pid = model["pid"]
        assert pid_alive(backend_pid)
    finally:
        server.stop()
    deadline = time.monotonic() + 10
    while pid_alive(backend_pid):
        assert time.monotonic() < deadline, "backend outlived the host"
        time.sleep(0.1)

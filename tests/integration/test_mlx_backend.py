"""The MLX backend: off Apple Silicon (or without an MLX port) it must refuse with a reason, and tests skip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MLX = REPO / "backends" / "mlx"


def probe() -> dict:
    out = subprocess.run([sys.executable, str(MLX / "probe.py")], capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout)


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


def test_small_generation():
    result = probe()
    if not result["usable"]:
        print(f"\nskipping: {result['reason']}")
        pytest.skip(result["reason"])
    pytest.fail("probe reports MLX usable but no MLX generation test exists yet; add one with the port")

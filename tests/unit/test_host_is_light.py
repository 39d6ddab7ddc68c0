"""The host process never imports torch, diffusers, onnxruntime or transformers."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "diffusers", "onnxruntime", "transformers", "mlx")


def test_importing_the_whole_host_pulls_no_ml_library():
    code = (
        "import sys, localhost_ai.cli, localhost_ai.api.app, localhost_ai.server, localhost_ai.sdk;"
        "from localhost_ai.settings import Settings; from localhost_ai.api.app import create_app;"
        "create_app(Settings());"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

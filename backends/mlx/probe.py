"""Prints one JSON line, {"usable": bool, "reason": str}: can the MLX backend run here? Cheap: imports mlx.core only."""

from __future__ import annotations

import importlib.util
import json
import platform
import sys

APPLE_SILICON = "MLX on Apple Silicon (Metal GPU, unified memory)"
LINUX_CPU = "mlx[cpu] on Linux: correct but slow, for testing; use Apple Silicon for speed"


def probe() -> dict[str, object]:
    system, machine = platform.system(), platform.machine()
    apple = system == "Darwin" and machine == "arm64"
    if importlib.util.find_spec("mlx") is None:
        if apple:
            return {"usable": False, "reason": "mlx is not installed (pip install -r backends/mlx/requirements.txt)"}
        if system == "Linux":
            return {
                "usable": False,
                "reason": 'mlx is not installed; on Linux, pip install "mlx[cpu]" runs it on the CPU '
                "(correct but slow, for testing). Use the onnx backend (fastest on CPU) or diffusers instead.",
            }
        name = {"Darwin": "macOS"}.get(system, system)
        return {
            "usable": False,
            "reason": f"MLX needs macOS on Apple Silicon (arm64) or Linux; this is {name} {machine}. "
            "Use the onnx backend (fastest on CPU) or the diffusers backend instead.",
        }
    # On Linux the plain `mlx` wheel installs but cannot load without its CPU build: import to be sure (~0.1 s).
    try:
        import mlx.core  # noqa: F401
    except Exception as exc:  # an ImportError, or an OSError from a missing shared library
        hint = ' (on Linux install "mlx[cpu]", not plain mlx)' if system == "Linux" else ""
        return {"usable": False, "reason": f"mlx is installed but does not load: {exc}{hint}"}
    return {"usable": True, "reason": APPLE_SILICON if apple else LINUX_CPU}


if __name__ == "__main__":
    print(json.dumps(probe()))
    sys.exit(0)

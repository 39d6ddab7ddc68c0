"""Prints one JSON line, {"usable": bool, "reason": str}: can the MLX backend run here? Platform checks only."""

from __future__ import annotations

import importlib.util
import json
import platform
import sys


def probe() -> dict[str, object]:
    system, machine = platform.system(), platform.machine()
    if system != "Darwin" or machine != "arm64":
        name = {"Darwin": "macOS"}.get(system, system)
        return {
            "usable": False,
            "reason": f"MLX needs macOS on Apple Silicon (arm64); this is {name} {machine}. "
            "Use the onnx backend (fastest on CPU) or the diffusers backend instead.",
        }
    if importlib.util.find_spec("mlx") is None:
        return {"usable": False, "reason": "mlx is not installed (pip install -r backends/mlx/requirements.txt)"}
    # The platform is right, but no MLX port of the Stable Diffusion networks ships yet: say so plainly.
    return {
        "usable": False,
        "reason": "the MLX port of the Stable Diffusion networks is not implemented yet; "
        "on Apple Silicon use the diffusers backend with device: mps",
    }


if __name__ == "__main__":
    print(json.dumps(probe()))
    sys.exit(0)

"""Prints one JSON line, {"usable": bool, "reason": str}: can this Python run the ONNX backend? Imports nothing."""

from __future__ import annotations

import importlib.util
import json
import platform
import sys

# Running needs these; torch/diffusers only matter for converting and non-DDIM schedulers.
REQUIRED = ("onnxruntime", "numpy", "transformers", "PIL", "grpc")


def probe() -> dict[str, object]:
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        return {
            "usable": False,
            "reason": f"missing Python packages: {', '.join(missing)} (pip install -r backends/onnx/requirements.txt)",
        }
    notes = [f"onnxruntime on {platform.system()} {platform.machine()}"]
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("diffusers") is None:
        notes.append("torch/diffusers absent: DDIM only, and models must be converted elsewhere")
    return {"usable": True, "reason": "; ".join(notes)}


if __name__ == "__main__":
    print(json.dumps(probe()))
    sys.exit(0)

"""Says whether the diffusers backend can run here, without importing torch: one JSON line."""

from __future__ import annotations

import importlib.util
import json

missing = [m for m in ("torch", "diffusers", "transformers", "safetensors") if importlib.util.find_spec(m) is None]
if missing:
    hint = "pip install 'localhost-ai[diffusers]'"
    result = {"usable": False, "reason": f"missing packages: {', '.join(missing)} ({hint})"}
else:
    result = {"usable": True, "reason": "torch and diffusers are installed (device chosen at load: cuda, mps, cpu)"}
print(json.dumps(result))

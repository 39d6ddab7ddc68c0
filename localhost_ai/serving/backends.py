"""Which backends are usable on this machine, and why not: each backend folder's probe.py, run once."""

from __future__ import annotations

import json
import subprocess
from functools import cache
from pathlib import Path


@cache
def probe_backend(backends_dir: str, name: str, python: str) -> dict:
    """`{"name", "usable", "reason"}` from `<backends_dir>/<name>/probe.py` (cheap: no heavy imports)."""
    probe = Path(backends_dir) / name / "probe.py"
    if not (Path(backends_dir) / name / "backend.py").is_file():
        return {"name": name, "usable": False, "reason": "no such backend"}
    if not probe.is_file():
        return {"name": name, "usable": True, "reason": "no probe; assumed usable"}
    try:
        out = subprocess.run([python, str(probe)], capture_output=True, text=True, timeout=30)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        return {"name": name, "usable": bool(result.get("usable")), "reason": str(result.get("reason", ""))}
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as exc:
        return {"name": name, "usable": False, "reason": f"probe failed: {exc}"}


def list_backends(backends_dir: Path, python: str) -> list[dict]:
    names = (
        sorted(p.name for p in backends_dir.iterdir() if (p / "backend.py").is_file()) if backends_dir.is_dir() else []
    )
    return [probe_backend(str(backends_dir), name, python) for name in names]

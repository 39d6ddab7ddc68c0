"""Test-suite setup: make the repo root importable and register the shared fixture plugins."""

from __future__ import annotations

import sys
from pathlib import Path

# `tests.fixtures` must import however pytest is started (plain `pytest` does not add the cwd).
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

pytest_plugins = ["tests.fixtures.plugin"]

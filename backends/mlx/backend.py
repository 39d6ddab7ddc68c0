"""The MLX backend process: refuses to start, with the probe's reason, wherever it cannot run.

The host starts it as `python backends/mlx/backend.py --addr 127.0.0.1:0 --parent-pid PID` and shows
the last lines of stderr when a backend exits before printing its port, so the reason reaches the user.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts backends/mlx/ on sys.path; the repo root makes `backends.mlx` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from backends.mlx.probe import probe  # noqa: E402

EXIT_UNSUPPORTED = 3


def main() -> int:
    # No MLX port of the networks ships yet, so probe() never says usable: always refuse, saying why.
    status = probe()
    print(f"mlx backend cannot run: {status['reason']}", file=sys.stderr, flush=True)
    return EXIT_UNSUPPORTED


if __name__ == "__main__":
    sys.exit(main())

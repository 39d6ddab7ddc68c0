"""Regenerates the checked-in stubs from backend.proto: `python -m localhost_ai.proto.generate`."""

from __future__ import annotations

import re
import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent


def generate(out_dir: Path = PROTO_DIR) -> None:
    """Run grpc_tools.protoc on backend.proto into out_dir, with a package-relative import."""
    from grpc_tools import protoc  # dev-only dependency

    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(PROTO_DIR / "backend.proto"),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    # protoc writes `import backend_pb2`, which only works with the folder on sys.path.
    grpc_file = out_dir / "backend_pb2_grpc.py"
    text = grpc_file.read_text()
    text = re.sub(r"^import backend_pb2 as", "from . import backend_pb2 as", text, flags=re.M)
    grpc_file.write_text(text)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_DIR)

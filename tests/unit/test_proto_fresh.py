"""The checked-in gRPC stubs must be exactly what backend.proto generates today."""

from __future__ import annotations

from pathlib import Path

import pytest

from localhost_ai.proto import generate

pytest.importorskip("grpc_tools", reason="grpcio-tools is a dev dependency")


@pytest.mark.parametrize("name", ["backend_pb2.py", "backend_pb2_grpc.py"])
def test_checked_in_stubs_are_fresh(tmp_path: Path, name: str) -> None:
    generate.generate(tmp_path)
    fresh = (tmp_path / name).read_text()
    checked_in = (generate.PROTO_DIR / name).read_text()
    assert fresh == checked_in, f"{name} is stale: run `python -m localhost_ai.proto.generate`"

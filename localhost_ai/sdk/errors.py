"""Exceptions a backend may raise, and the one table that turns any exception into a gRPC status."""

from __future__ import annotations

import grpc


class BackendInvalidArgument(ValueError):
    """The request cannot be served as asked (bad size, unknown option...)."""


class BackendOutOfMemory(MemoryError):
    """The device ran out of memory."""


class BackendNotLoaded(RuntimeError):
    """A generate call came before LoadModel succeeded."""


def grpc_code_for(exc: BaseException) -> grpc.StatusCode:
    """Which gRPC status a backend exception becomes; torch's OOM errors are matched by name."""
    name = type(exc).__name__
    if (
        isinstance(exc, MemoryError)
        or name in {"OutOfMemoryError", "OutOfResources"}
        or ("out of memory" in str(exc).lower() and isinstance(exc, RuntimeError))
    ):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, (ValueError, TypeError)):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, BackendNotLoaded):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED
    return grpc.StatusCode.INTERNAL

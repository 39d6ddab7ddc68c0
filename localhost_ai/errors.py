"""One error hierarchy for the host, and the ONE table from gRPC status codes to it.

Every failure a client can see is an `APIError`; `api/errors.py` renders it as the OpenAI
envelope `{"error": {"message", "type", "param", "code"}}` with `status_code`.
"""

from __future__ import annotations

import grpc


class APIError(Exception):
    """An error with an HTTP status and an OpenAI error type."""

    status_code = 500
    error_type = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def envelope(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(APIError):
    status_code = 400
    error_type = "invalid_request_error"


class NotFound(APIError):
    status_code = 404
    error_type = "invalid_request_error"


class ModelNotFound(NotFound):
    def __init__(self, name: str, installed: list[str]) -> None:
        known = ", ".join(sorted(installed)) or "none"
        super().__init__(
            f"The model '{name}' is not installed (installed: {known}). "
            f"Install it with `localhost-ai models apply {name}` or POST /models/apply.",
            param="model",
            code="model_not_found",
        )


class Conflict(APIError):
    status_code = 409
    error_type = "invalid_request_error"


class BackendBusy(APIError):
    """The model's request queue is full."""

    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, code="queue_full", headers={"Retry-After": str(retry_after)})


class BackendUnavailable(APIError):
    """The backend cannot serve now (out of memory, shutting down)."""

    status_code = 503
    error_type = "server_error"


class BackendError(APIError):
    """The backend failed to produce a result for an internal reason."""

    status_code = 500
    error_type = "server_error"


class BackendLoadFailed(APIError):
    """The backend process exited or its model failed to load."""

    status_code = 500
    error_type = "server_error"


class BackendCrashed(APIError):
    """The backend process died or dropped the connection mid-request."""

    status_code = 502
    error_type = "server_error"


class BackendTimeout(APIError):
    """The backend did not become ready, or answer, in time."""

    status_code = 504
    error_type = "server_error"


# The one place that says what a backend's gRPC status means for the client.
_GRPC_TO_ERROR: dict[grpc.StatusCode, type[APIError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: BackendUnavailable,
    grpc.StatusCode.UNAVAILABLE: BackendCrashed,
    grpc.StatusCode.CANCELLED: BackendCrashed,
    grpc.StatusCode.DEADLINE_EXCEEDED: BackendTimeout,
    grpc.StatusCode.UNIMPLEMENTED: BackendError,
}


def from_grpc(code: grpc.StatusCode, details: str | None, model: str) -> APIError:
    """Translate a backend's gRPC status into the error the client sees."""
    cls = _GRPC_TO_ERROR.get(code, BackendError)
    detail = details or code.name
    if cls is BackendCrashed:
        return BackendCrashed(f"The backend for model '{model}' stopped unexpectedly: {detail}")
    if cls is BackendUnavailable:
        return BackendUnavailable(f"The backend for model '{model}' ran out of resources: {detail}")
    return cls(detail)

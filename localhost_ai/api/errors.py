"""The one place that turns exceptions into OpenAI error envelopes (validation errors are 400, not 422)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from localhost_ai.errors import APIError, InvalidRequest

log = logging.getLogger(__name__)


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.envelope(), status_code=exc.status_code, headers=exc.headers)


def validation_error(exc: RequestValidationError) -> InvalidRequest:
    problems = exc.errors()
    first = problems[0] if problems else {}
    loc = [str(p) for p in first.get("loc", []) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
    elif first.get("type") in {"json_invalid", "model_attributes_type"}:
        message = "The request body must be a JSON object."
    else:
        message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}." if param else str(first.get("msg"))
    return InvalidRequest(message, param=param)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        if exc.status_code >= 500:
            log.error("%s %s -> %d: %s", request.method, request.url.path, exc.status_code, exc.message)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        err = APIError(str(exc.detail))
        err.status_code = exc.status_code
        err.error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(err)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(APIError(f"Internal server error: {type(exc).__name__}: {exc}"))

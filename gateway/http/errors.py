"""The domain's errors (``gateway.errors``) as HTTP answers: a status per class, OpenAI's
``{"error": {message, type, param, code}}`` body, and the headers that tell a client when (and
whether) to retry. Anything that is not a ``GatewayError`` is logged with its traceback and
answered as a plain 500, never with the traceback.
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from gateway.errors import (
    DeadlineExceeded,
    GatewayError,
    InternalError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    RequestTooLarge,
    Unauthenticated,
    Unavailable,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamTimeout,
    invalid_request,
)

log = logging.getLogger("ttc.errors")

# Most specific class first: the first that matches gives the status.
STATUSES: tuple[tuple[type[GatewayError], int], ...] = (
    (RequestTooLarge, 413),
    (InvalidRequest, 400),
    (Unauthenticated, 401),
    (PermissionDenied, 403),
    (NotFound, 404),
    (RateLimited, 429),
    (InternalError, 500),
    (UpstreamFailed, 502),
    (Unavailable, 503),
    (UpstreamTimeout, 504),
    (DeadlineExceeded, 504),
)


class HttpError(GatewayError):
    """An HTTP-level refusal by the framework itself (an unknown path, a wrong method)."""

    def __init__(self, status: int, message: str, type: str) -> None:
        super().__init__(message, type=type)
        self.status = status


def status_of(error: GatewayError) -> int:
    """The HTTP status a client gets for ``error``."""
    if isinstance(error, UpstreamRejected):
        return 400 if error.worker_status == 404 else error.worker_status
    if isinstance(error, HttpError):
        return error.status
    for kind, status in STATUSES:
        if isinstance(error, kind):
            return status
    return 400


def headers_of(error: GatewayError) -> dict[str, str]:
    headers: dict[str, str] = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    if isinstance(error, RateLimited):
        headers.update({f"x-ratelimit-{k}": v for k, v in error.ratelimit.items()})
    if isinstance(error, QuotaExceeded):
        headers["x-should-retry"] = "false"  # the openai SDK would retry a 429 otherwise
    return headers


def to_response(error: GatewayError) -> Response:
    return Response(
        orjson.dumps(error.body()),
        status_code=status_of(error),
        media_type="application/json",
        headers=headers_of(error),
    )


def error_response(exc: Exception, where: str) -> Response:
    """The client's answer to an exception: its own body for a ``GatewayError``, else a plain
    500 (the traceback goes to the log, never to the client)."""
    if isinstance(exc, GatewayError):
        return to_response(exc)
    log.error("unhandled error on %s", where, exc_info=exc)
    return to_response(InternalError())


def install_error_handlers(app: FastAPI) -> None:
    """Make every error path answer in OpenAI's shape."""

    async def on_error(request: Request, exc: Exception) -> Response:
        return error_response(exc, f"{request.method} {request.url.path}")

    async def on_http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return to_response(HttpError(exc.status_code, str(exc.detail), kind))

    async def on_validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"] if p not in ("body", "query", "header"))
        return to_response(invalid_request(f"{param}: {first['msg']}", param=param or None))

    app.add_exception_handler(GatewayError, on_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_error)

"""OpenAI-style errors: every failure a client sees is ``{"error": {message, type, param, code}}``.

A ``GatewayError`` raised anywhere below the routes becomes that body with its HTTP status.
Anything else is logged with its traceback and answered as a plain 500, never with the traceback.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger("ttc.errors")


class GatewayError(Exception):
    """A failure with an HTTP status and an OpenAI-style body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_response(self) -> Response:
        return Response(
            orjson.dumps(self.body()),
            status_code=self.status,
            media_type="application/json",
            headers=self.headers,
        )


def invalid_request(
    message: str, param: str | None = None, code: str = "invalid_value"
) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404,
        f"The model {model!r} does not exist or is not served by this gateway",
        param="model",
        code="model_not_found",
    )


def bad_gateway(message: str) -> GatewayError:
    return GatewayError(502, message, type="upstream_error", code="bad_gateway")


def gateway_timeout(message: str) -> GatewayError:
    return GatewayError(504, message, type="upstream_error", code="timeout")


def overloaded(message: str, status: int = 429, retry_after_s: int = 1) -> GatewayError:
    return GatewayError(
        status,
        message,
        type="server_overloaded" if status == 503 else "rate_limit_error",
        code="overloaded" if status == 429 else "no_healthy_worker",
        headers={"Retry-After": str(retry_after_s)},
    )


def error_response(exc: Exception, where: str) -> Response:
    """The client's answer to an exception: its own body for a ``GatewayError``, else a plain
    500 (the traceback goes to the log, never to the client)."""
    if isinstance(exc, GatewayError):
        return exc.to_response()
    log.error("unhandled error on %s", where, exc_info=exc)
    return GatewayError(
        500, "internal error in the gateway", type="server_error", code="internal_error"
    ).to_response()


def install_error_handlers(app: FastAPI) -> None:
    """Make every error path answer in OpenAI's shape."""

    async def on_error(request: Request, exc: Exception) -> Response:
        return error_response(exc, f"{request.method} {request.url.path}")

    async def on_http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return GatewayError(exc.status_code, str(exc.detail), type=kind).to_response()

    async def on_validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"] if p not in ("body", "query", "header"))
        return invalid_request(f"{param}: {first['msg']}", param=param or None).to_response()

    app.add_exception_handler(GatewayError, on_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_error)

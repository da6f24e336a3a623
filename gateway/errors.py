"""What can go wrong with a request, in the domain's words: every failure a client is told
about is one of these classes, with OpenAI's error fields (message, type, param, code).

Nothing here knows HTTP: ``gateway.http.errors`` gives each class its status and turns it into
the ``{"error": {message, type, param, code}}`` body. Anything that is not a ``GatewayError``
is a bug, answered as a plain 500 (its traceback goes to the log, never to the client).
"""

from __future__ import annotations

from typing import Any, ClassVar


class GatewayError(Exception):
    """A failure the client is told about. ``type`` and ``code`` default per class;
    ``retry_after_s`` is set when trying again later can succeed."""

    default_type: ClassVar[str] = "invalid_request_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.type = type if type is not None else self.default_type
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        """The OpenAI error object."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(GatewayError):
    """The request cannot be served as sent (a field, a header, a strategy parameter)."""

    default_code = "invalid_value"


class RequestTooLarge(InvalidRequest):
    """The body is larger than ``limits.max_body_bytes``."""

    default_code = "request_too_large"


class Unauthenticated(GatewayError):
    """No API key, or one this gateway does not accept."""


class PermissionDenied(GatewayError):
    """The key may not ask for this (a strategy, a k)."""


class NotFound(GatewayError):
    """A model (or other named thing) this gateway does not serve."""

    default_type = "not_found_error"


class RateLimited(GatewayError):
    """A limit ran out; ``retry_after_s`` says when to try again, ``ratelimit`` which limit
    (OpenAI's ``x-ratelimit-*`` names: ``limit-requests``, ``remaining-requests``, ...)."""

    default_type = "rate_limit_error"

    def __init__(self, message: str, *, ratelimit: dict[str, str] | None = None, **fields: Any):
        super().__init__(message, **fields)
        self.ratelimit = ratelimit or {}


class QuotaExceeded(RateLimited):
    """A key's budget is spent: trying again will not help."""

    default_type = "insufficient_quota"


class Unavailable(GatewayError):
    """The gateway cannot serve it right now (no healthy worker, shared state down)."""

    default_type = "server_overloaded"


class UpstreamRejected(GatewayError):
    """A worker refused the request with a 4xx of its own (passed on, except that a worker's
    404, an endpoint it lacks, is the request's fault: 400)."""

    default_code = "upstream_rejected"

    def __init__(self, message: str, *, worker_status: int, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.worker_status = worker_status


class UpstreamFailed(GatewayError):
    """A worker broke: a 5xx, a broken connection or protocol, an error event."""

    default_type = "upstream_error"
    default_code = "bad_gateway"


class UpstreamTimeout(GatewayError):
    """A worker sent nothing for its pool's ``read_timeout_s``."""

    default_type = "upstream_error"
    default_code = "timeout"


class DeadlineExceeded(GatewayError):
    """The request's deadline (``X-TTC-Deadline-Ms`` or ``limits.request_timeout_s``) passed."""

    default_type = "timeout_error"
    default_code = "deadline_exceeded"


class InternalError(GatewayError):
    """A bug in the gateway; the client is told no more than that."""

    default_type = "server_error"
    default_code = "internal_error"

    def __init__(self) -> None:
        super().__init__("internal error in the gateway")


def invalid_request(
    message: str, param: str | None = None, code: str = "invalid_value"
) -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def model_not_found(model: str) -> NotFound:
    return NotFound(
        f"The model {model!r} does not exist or is not served by this gateway",
        param="model",
        code="model_not_found",
        type="invalid_request_error",
    )


def bad_gateway(message: str) -> UpstreamFailed:
    return UpstreamFailed(message)


def gateway_timeout(message: str) -> UpstreamTimeout:
    return UpstreamTimeout(message)

"""Request ids and the access log, as a plain ASGI middleware (cheaper than BaseHTTPMiddleware).

Every request gets an ``X-Request-Id``: the client's own if it sent a sane one, else a new one.
It is echoed in the response, stored in ``scope["state"]["request_id"]`` for the handlers, and
written in the one access-log line per request (method, path, status, duration; never bodies).
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("ttc.access")

_SANE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp, access_log_enabled: bool = True) -> None:
        self.app = app
        self.access_log_enabled = access_log_enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = b""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value if _SANE_ID.match(value) else b""
                break
        if not request_id:
            request_id = uuid.uuid4().hex.encode()
        scope.setdefault("state", {})["request_id"] = request_id.decode()
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log_enabled:
                # A stream starts with 200 and may end otherwise (broken: 502/504, client
                # gone: 499): the line shows both, ``200->502``.
                final = scope["state"].get("final_status")
                shown = f"{status}->{final}" if final not in (None, status) else status or "-"
                access_log.info(
                    '%s "%s %s" %s %.1fms',
                    request_id.decode(),
                    scope["method"],
                    scope["path"],
                    shown,
                    (time.perf_counter() - started) * 1000,
                )

"""An engine that answers at once: the stand-in that overhead benchmarks put behind a gateway.

A raw ASGI app (no framework, so it costs next to nothing) that speaks just enough of the OpenAI
API: ``POST /v1/chat/completions`` and ``/v1/completions`` return a fixed small completion, or
with ``"stream": true`` a short SSE stream (role chunk, two content chunks, finish chunk, a usage
chunk when ``stream_options.include_usage`` is set, ``[DONE]``), each chunk a separate write;
``GET /v1/models`` and ``/health`` answer 200. Run it with
``python -m gateway.bench.instant_engine --port 9100`` (``--chunk-delay-ms`` spaces the chunks
of a stream, for soak tests whose streams should last).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import orjson

Scope = dict[str, Any]
Message = dict[str, Any]

CONTENT = ("Hello", " from the stand-in.")
PROMPT_TOKENS = 5
COMPLETION_TOKENS = 6
CREATED = 1_700_000_000

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_MODELS = orjson.dumps(
    {"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "bench"}]}
)
_USAGE = {
    "prompt_tokens": PROMPT_TOKENS,
    "completion_tokens": COMPLETION_TOKENS,
    "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
}


def completion(body: dict[str, Any], chat: bool) -> dict[str, Any]:
    """The non-streaming answer, one choice per ``n``."""
    n = body.get("n") or 1
    text = "".join(CONTENT)
    choices: list[dict[str, Any]] = [
        (
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "stop",
            }
            if chat
            else {"index": i, "text": text, "logprobs": None, "finish_reason": "stop"}
        )
        for i in range(n)
    ]
    return {
        "id": "cmpl-standin",
        "object": "chat.completion" if chat else "text_completion",
        "created": CREATED,
        "model": body.get("model", "m"),
        "choices": choices,
        "usage": {**_USAGE, "completion_tokens": COMPLETION_TOKENS * n},
    }


def stream_chunks(body: dict[str, Any], chat: bool) -> list[bytes]:
    """The SSE events of a streamed answer, ``[DONE]`` included."""
    n = body.get("n") or 1
    base = {
        "id": "cmpl-standin",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": CREATED,
        "model": body.get("model", "m"),
    }

    def choice(i: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        if chat:
            return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": i, "text": delta.get("content", ""), "finish_reason": finish}

    deltas: list[tuple[dict[str, Any], str | None]] = []
    if chat:
        deltas.append(({"role": "assistant", "content": ""}, None))
    deltas += [({"content": piece}, None) for piece in CONTENT]
    deltas.append(({}, "stop"))
    events = [
        {**base, "choices": [choice(i, delta, finish)]}
        for delta, finish in deltas
        for i in range(n)
    ]
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append(
            {**base, "choices": [], "usage": {**_USAGE, "completion_tokens": COMPLETION_TOKENS * n}}
        )
    return [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


async def _read_body(receive: Any) -> bytes:
    body = b""
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return body
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


def make_app(chunk_delay_s: float = 0.0) -> Any:
    """The ASGI application; streamed chunks ``chunk_delay_s`` apart (0: at once)."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await _serve(scope, receive, send, chunk_delay_s)

    return app


async def _serve(scope: Scope, receive: Any, send: Any, chunk_delay_s: float) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if scope["method"] == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
        try:
            body = orjson.loads(await _read_body(receive))
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            await _answer(send, 400, b'{"error":{"message":"body is not a JSON object"}}')
            return
        chat = path == "/v1/chat/completions"
        if body.get("stream"):
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            for chunk in stream_chunks(body, chat):
                if chunk_delay_s:
                    await asyncio.sleep(chunk_delay_s)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await _answer(send, 200, orjson.dumps(completion(body, chat)))
    elif scope["method"] == "GET" and path in ("/v1/models", "/health"):
        await _answer(send, 200, _MODELS)
    else:
        await _answer(send, 404, b'{"error":{"message":"not found"}}')


async def _answer(send: Any, status: int, payload: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _JSON_HEADERS})
    await send({"type": "http.response.body", "body": payload})


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="between SSE chunks")
    args = parser.parse_args(argv)
    uvicorn.run(
        make_app(args.chunk_delay_ms / 1000),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()

"""An engine that answers at once: the stand-in that overhead benchmarks put behind a gateway.

A raw ASGI app (no framework, so it costs next to nothing) that speaks just enough of the OpenAI
API: ``POST /v1/chat/completions`` and ``/v1/completions`` return a fixed small completion, or
with ``"stream": true`` a short SSE stream (role chunk, two content chunks, finish chunk, a usage
chunk when ``stream_options.include_usage`` is set, ``[DONE]``), each chunk a separate write;
``GET /v1/models`` and ``/health`` answer 200. Run it with
``python -m gateway.bench.instant_engine --port 9100`` (``--chunk-delay-ms`` spaces the chunks
of a stream, for soak tests whose streams should last).

``--tokens T`` (the fan-out benchmark, ``ttc-gateway bench fanout``) makes every answer T tokens
per choice (``min(T, max_tokens)``; finish ``length`` when ``max_tokens`` cut it), streamed as
vLLM streams an ``n > 1`` request: a role chunk per choice, then one chunk per token, the
choices interleaved step by step (token 1 of every choice, then token 2, ...), then a finish
chunk per choice (empty content, ``stop_reason: null``), a usage chunk when
``stream_options.include_usage`` is set, ``[DONE]``; each chunk a separate write. With
``stream_options.continuous_usage_stats`` every chunk carries its choice's usage so far, as vLLM
does. Every token is ``TOKEN`` (" 7"), so every sample has the same answer.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator
from typing import Any

import orjson

Scope = dict[str, Any]
Message = dict[str, Any]

CONTENT = ("Hello", " from the stand-in.")
PROMPT_TOKENS = 5
COMPLETION_TOKENS = 6
CREATED = 1_700_000_000
TOKEN = " 7"  # one token of the ``--tokens`` mode

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


def _token_count(body: dict[str, Any], tokens: int) -> tuple[int, str]:
    """(tokens per choice, finish reason) of a ``--tokens`` answer."""
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and 0 < limit < tokens:
        return limit, "length"
    return tokens, "stop"


def completion(body: dict[str, Any], chat: bool, tokens: int = 0) -> dict[str, Any]:
    """The non-streaming answer, one choice per ``n`` (``tokens``: that many per choice)."""
    n = body.get("n") or 1
    text = "".join(CONTENT)
    finish, per_choice = "stop", COMPLETION_TOKENS
    if tokens:
        per_choice, finish = _token_count(body, tokens)
        text = TOKEN * per_choice
    choices: list[dict[str, Any]] = [
        (
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
            if chat
            else {"index": i, "text": text, "logprobs": None, "finish_reason": finish}
        )
        for i in range(n)
    ]
    return {
        "id": "cmpl-standin",
        "object": "chat.completion" if chat else "text_completion",
        "created": CREATED,
        "model": body.get("model", "m"),
        "choices": choices,
        "usage": _usage(per_choice * n)
        if tokens
        else {**_USAGE, "completion_tokens": COMPLETION_TOKENS * n},
    }


def _usage(completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion_tokens,
        "total_tokens": PROMPT_TOKENS + completion_tokens,
    }


def token_stream(body: dict[str, Any], chat: bool, tokens: int) -> Iterator[bytes]:
    """The SSE events of a ``--tokens`` answer, ``[DONE]`` included (see the module's doc)."""
    n = body.get("n") or 1
    per_choice, finish = _token_count(body, tokens)
    options = body.get("stream_options") or {}
    continuous = bool(options.get("continuous_usage_stats"))
    base = {
        "id": "cmpl-standin",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": CREATED,
        "model": body.get("model", "m"),
    }

    def event(i: int, text: str, first: bool, done: int, finish_reason: str | None) -> bytes:
        choice: dict[str, Any]
        if chat:
            delta = {"role": "assistant", "content": text} if first else {"content": text}
            choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": i, "text": text, "logprobs": None, "finish_reason": finish_reason}
        if finish_reason is not None:
            choice["stop_reason"] = None
        chunk: dict[str, Any] = {**base, "choices": [choice]}
        if continuous:
            chunk["usage"] = _usage(done)
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    if chat:
        for i in range(n):
            yield event(i, "", True, 0, None)
    for step in range(per_choice):
        for i in range(n):
            yield event(i, TOKEN, False, step + 1, None)
    for i in range(n):
        yield event(i, "", False, per_choice, finish)
    if options.get("include_usage"):
        usage = {**base, "choices": [], "usage": _usage(per_choice * n)}
        yield b"data: " + orjson.dumps(usage) + b"\n\n"
    yield b"data: [DONE]\n\n"


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


def make_app(chunk_delay_s: float = 0.0, tokens: int = 0) -> Any:
    """The ASGI application; streamed chunks ``chunk_delay_s`` apart (0: at once); ``tokens``
    (> 0) tokens per choice, one per chunk (the ``--tokens`` mode)."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await _serve(scope, receive, send, chunk_delay_s, tokens)

    return app


async def _serve(
    scope: Scope, receive: Any, send: Any, chunk_delay_s: float, tokens: int = 0
) -> None:
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
            chunks = token_stream(body, chat, tokens) if tokens else stream_chunks(body, chat)
            for chunk in chunks:
                if chunk_delay_s:
                    await asyncio.sleep(chunk_delay_s)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await _answer(send, 200, orjson.dumps(completion(body, chat, tokens)))
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
    parser.add_argument(
        "--tokens",
        type=int,
        default=0,
        help="tokens per choice, one per chunk (0: the fixed answer)",
    )
    args = parser.parse_args(argv)
    uvicorn.run(
        make_app(args.chunk_delay_ms / 1000, args.tokens),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()

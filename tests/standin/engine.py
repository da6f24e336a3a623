"""The stand-in engine: a raw ASGI app that speaks one engine's OpenAI-compatible dialect.

``StandinEngine`` is both the ASGI app and the handle tests inspect: the requests it received
(with their JSON bodies and headers), how many are running, finished and aborted, and the
SGLang ``/abort_request`` calls it got. ``GET /standin/state`` returns the same as JSON and
``POST /standin/script`` replaces the script, for a stand-in running in another process.

Chat-template rendering, for strategies that continue raw prompts: llama.cpp's
``POST /apply-template`` and vLLM's ``POST /tokenize`` (with ``messages``) + ``/detokenize``,
both with the trivial template ``render_template`` (vLLM "tokens" are the text's code points).

Prompts are counted and prefix-cached as words (``_words``: whitespace-separated, ``<think>`` and
``</think>`` always words of their own). A chat request also leaves its rendered prompt followed
by each choice's generated text in the prefix cache, as an engine keeps the blocks it computed,
so a raw-prompt continuation of a chat answer finds them.

Generation is scheduled, not simulated: each choice's tokens get emission times from its
``SampleScript`` (first-token delay, per-token delay), and the events of all choices are sent in
time order, so choices interleave as they do on a real engine. A client disconnect cancels the
generation at once and counts the request as aborted, as vLLM's ``with_cancellation`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.http.streaming import wait_for_disconnect
from tests.standin.script import THINK_CLOSE, THINK_OPEN, SampleScript, Script, split_tokens
from tests.standin.wire import FLAVORS, EngineCounters, Flavor, render_metrics

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PREFIX_BLOCK_TOKENS = 16
REASONING = "reasoning"  # the kind of a token that a reasoning parser moves out of the content
CONTENT = "content"
DEFAULT_MODEL = "standin-model"


class StandinDied(Exception):
    """Raised inside the app to make the server drop the connection mid-stream."""


@dataclass
class ReceivedRequest:
    """One generation request as the engine saw it."""

    path: str
    headers: dict[str, str]
    body: Any
    rid: str


@dataclass
class _Running:
    rid: str
    task: asyncio.Task[None] | None = None
    aborted_by_request: bool = False
    headers_sent: bool = False
    stream: bool = False
    tokens: int = 0


@dataclass
class _Sample:
    """One choice, fully planned: what is generated, what is visible, and when."""

    index: int
    tokens: list[str]
    deltas: list[str]  # visible text each token adds (stop strings are cut)
    kinds: list[str]  # REASONING or CONTENT, per token
    times: list[float]
    logprobs: list[float]
    finish_reason: str
    stop: str | None

    @property
    def text(self) -> str:
        return self._visible(CONTENT)

    @property
    def reasoning(self) -> str:
        return self._visible(REASONING)

    def _visible(self, kind: str) -> str:
        return "".join(d for d, k in zip(self.deltas, self.kinds, strict=True) if k == kind)

    @property
    def end_time(self) -> float:
        return self.times[-1] if self.times else 0.0


@dataclass
class _Plan:
    endpoint: str  # "chat" or "completions"
    id: str
    created: int
    model: str
    prompt_tokens: int
    cached_tokens: int
    samples: list[_Sample]
    stream: bool
    include_usage: bool
    continuous_usage: bool
    logprobs: int | None  # None: not asked; else how many top alternatives
    chat_logprobs: bool = False
    reasoning: str = "none"  # the script's reasoning mode
    reasoning_field: str = "reasoning_content"  # where REASONING tokens go in chat
    extra: dict[str, Any] = field(default_factory=dict)


class StandinEngine:
    """A scriptable engine stand-in; call it as an ASGI app."""

    def __init__(
        self,
        flavor: str = "vllm",
        script: Script | None = None,
        *,
        served_model: str | None = None,
        max_running: int | None = None,
    ) -> None:
        if flavor not in FLAVORS:
            raise ValueError(f"unknown flavor {flavor!r}; expected one of {sorted(FLAVORS)}")
        self.flavor: Flavor = FLAVORS[flavor]
        self.script = script or Script()
        self.served_model = served_model
        self._slots = asyncio.Semaphore(max_running) if max_running else None
        self._changed: asyncio.Condition | None = None
        self._prefix_blocks: set[bytes] = set()
        self._active: dict[str, _Running] = {}
        self.reset()

    # -- introspection ------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget what was received and counted (the script stays)."""
        self.requests: list[ReceivedRequest] = []
        self.running = 0
        self.waiting = 0
        self.finished = 0
        self.aborted = 0
        self.abort_requests: list[str] = []
        self.counters = EngineCounters()
        self.drawn = 0  # choices handed out so far, for a script that ``draw``s

    @property
    def bodies(self) -> list[Any]:
        return [r.body for r in self.requests]

    def state(self) -> dict[str, Any]:
        return {
            "flavor": self.flavor.name,
            "received": len(self.requests),
            "running": self.running,
            "waiting": self.waiting,
            "finished": self.finished,
            "aborted": self.aborted,
            "abort_requests": list(self.abort_requests),
            "requests": [
                {"path": r.path, "headers": r.headers, "body": r.body, "rid": r.rid}
                for r in self.requests
            ],
        }

    async def wait_until(self, predicate: Callable[[StandinEngine], bool], within_s: float) -> None:
        """Wait (without polling) until ``predicate(self)`` holds; TimeoutError after
        ``within_s`` seconds, with the state in the message."""
        cond = self._condition()
        try:
            async with asyncio.timeout(within_s), cond:
                await cond.wait_for(lambda: predicate(self))
        except TimeoutError:
            brief = self._brief()
            raise TimeoutError(f"stand-in state did not match in {within_s}s: {brief}") from None

    def _brief(self) -> dict[str, Any]:
        state = self.state()
        del state["requests"]
        return state

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _notify(self) -> None:
        cond = self._condition()
        async with cond:
            cond.notify_all()

    # -- ASGI ---------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            await self._generate(scope, receive, send, "chat" if "chat" in path else "completions")
        elif method == "GET" and path == "/health":
            await self._health(send)
        elif method == "GET" and path == "/v1/models":
            model = self.served_model or DEFAULT_MODEL
            await _send_json(send, 200, self.flavor.models_body(model))
        elif method == "GET" and path == "/metrics" and self.flavor.metric_prefix:
            text = render_metrics(
                self.flavor,
                self.served_model or DEFAULT_MODEL,
                self.running,
                self.waiting,
                self.aborted,
                self.counters,
            )
            await _send(send, 200, text.encode(), b"text/plain; version=0.0.4; charset=utf-8")
        elif method == "POST" and path in _RENDER_PATHS.get(self.flavor.name, ()):
            await self._render(scope, receive, send)
        elif method == "POST" and path == "/abort_request" and self.flavor.name == "sglang":
            await self._abort_request(receive, send)
        elif method == "GET" and path == "/standin/state":
            await _send_json(send, 200, self.state())
        elif method == "POST" and path == "/standin/script":
            await self._set_script(receive, send)
        elif method == "POST" and path == "/standin/reset":
            self.reset()
            await _send_json(send, 200, self.state())
        else:
            await _send_json(send, 404, self.flavor.error_body(404, f"Not Found: {path}"))

    async def _health(self, send: Send) -> None:
        if self.flavor.health_body is None:
            await _send_json(send, 404, self.flavor.error_body(404, "Not Found: /health"))
            return
        status = self.script.health_status
        body = self.flavor.health_body if status == 200 else b""
        await _send(send, status, body, b"application/json")

    async def _set_script(self, receive: Receive, send: Send) -> None:
        try:
            self.script = Script.from_json(orjson.loads(await _read_body(receive)))
            self.drawn = 0
        except (ValueError, TypeError) as exc:
            await _send_json(send, 400, {"error": str(exc)})
            return
        await _send_json(send, 200, self.script.to_json())

    async def _render(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        try:
            body = orjson.loads(await _read_body(receive))
        except orjson.JSONDecodeError as exc:
            await self._error(send, 400, f"invalid JSON body: {exc}")
            return
        self.requests.append(ReceivedRequest(path, {}, body, ""))
        await self._notify()
        if path == "/detokenize":
            tokens = body.get("tokens") if isinstance(body, dict) else None
            if not isinstance(tokens, list):
                await self._error(send, 400, "'tokens' is required")
                return
            await _send_json(send, 200, {"prompt": "".join(map(chr, tokens))})
            return
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list):
            await self._error(send, 400, "'messages' is required")
            return
        generation = path == "/apply-template" or bool(body.get("add_generation_prompt", True))
        prompt = render_template(messages, generation, think_opened=self._think_opened())
        if path == "/apply-template":
            await _send_json(send, 200, {"prompt": prompt})
        else:
            tokens = [ord(c) for c in prompt]
            await _send_json(
                send, 200, {"count": len(tokens), "max_model_len": 8192, "tokens": tokens}
            )

    async def _abort_request(self, receive: Receive, send: Send) -> None:
        try:
            rid = str(orjson.loads(await _read_body(receive)).get("rid", ""))
        except (ValueError, AttributeError):
            rid = ""
        self.abort_requests.append(rid)
        running = self._active.get(rid)
        if running is not None and running.task is not None and not running.task.done():
            running.aborted_by_request = True
            running.task.cancel()
        await _send(send, 200, b"", b"application/json")
        await self._notify()

    # -- generation ---------------------------------------------------------------------------
    async def _generate(self, scope: Scope, receive: Receive, send: Send, endpoint: str) -> None:
        raw = await _read_body(receive)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self.requests.append(ReceivedRequest(scope["path"], headers, None, ""))
            await self._error(send, 400, f"invalid JSON body: {exc}")
            return
        rid = str(body.get("rid") or uuid.uuid4().hex) if isinstance(body, dict) else ""
        self.requests.append(ReceivedRequest(scope["path"], headers, body, rid))
        await self._notify()
        script = self.script
        if script.status is not None:
            await self._error(send, script.status, script.error_message)
            return
        problem = self._validate(body, endpoint)
        if problem is not None:
            await self._error(send, *problem)
            return
        plan = self._plan(body, endpoint, rid, script)
        running = _Running(rid=rid, stream=plan.stream)
        if self._slots is not None:
            self.waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self.waiting -= 1
        self.running += 1
        self._active[rid] = running
        self.counters.prompt_tokens += plan.prompt_tokens
        outcome = "aborted"
        try:
            outcome = await self._run_until_disconnect(
                receive, running, self._respond(plan, script, running, send)
            )
            if outcome == "aborted_by_request":
                await self._send_abort_tail(plan, running, send)
        finally:
            self.running -= 1
            self._active.pop(rid, None)
            if self._slots is not None:
                self._slots.release()
            self.counters.generation_tokens += running.tokens
            if outcome == "finished":
                self.finished += 1
                self.counters.requests_ok += 1
            else:
                self.aborted += 1
            await self._notify()

    async def _run_until_disconnect(
        self, receive: Receive, running: _Running, work: Awaitable[None]
    ) -> str:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        running.task = task
        watcher = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            watcher.cancel()
        if task.cancelled():
            return "aborted_by_request" if running.aborted_by_request else "aborted"
        task.result()  # re-raise StandinDied and bugs
        return "finished"

    def _validate(self, body: Any, endpoint: str) -> tuple[int, str] | None:
        if not isinstance(body, dict):
            return 400, "the request body must be a JSON object"
        if endpoint == "chat" and not isinstance(body.get("messages"), list):
            return 400, "Expected 'messages' to be an array"
        if endpoint == "completions" and "prompt" not in body:
            return 400, "'prompt' is required"
        wrong_model = body.get("model") != self.served_model
        if self.served_model and self.flavor.name != "llamacpp" and wrong_model:
            return 404, f"The model `{body.get('model')}` does not exist."
        n = body.get("n", 1)
        if not isinstance(n, int) or n < 1:
            return 400, "n must be at least 1"
        budget = body.get("thinking_token_budget")  # vLLM's; other engines ignore the field
        valid_budget = isinstance(budget, int) and not isinstance(budget, bool) and budget >= 0
        if self.flavor.name == "vllm" and budget is not None and not valid_budget:
            return 400, "thinking_token_budget must be a non-negative integer"
        return None

    def _think_opened(self) -> bool:
        return self.script.reasoning == "opened"

    async def _error(self, send: Send, status: int, message: str) -> None:
        await _send_json(send, status, self.flavor.error_body(status, message))

    # -- planning -----------------------------------------------------------------------------
    def _plan(self, body: dict[str, Any], endpoint: str, rid: str, script: Script) -> _Plan:
        prompt_words = _prompt_words(body, endpoint)
        prompt_tokens = len(prompt_words)
        if endpoint == "chat":
            prompt_tokens += 4 * len(body["messages"]) + (script.reasoning == "opened")
        cached = self._prefix_lookup(prompt_words)
        options = body.get("stream_options") or {}
        if endpoint == "chat":
            max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
            logprobs = int(body.get("top_logprobs") or 0) if body.get("logprobs") else None
        else:
            max_tokens = body.get("max_tokens")
            raw_lp = body.get("logprobs")
            logprobs = int(raw_lp) if isinstance(raw_lp, int) and raw_lp is not False else None
        stops = body.get("stop") or []
        if isinstance(stops, str):
            stops = [stops]
        n = int(body.get("n", 1))
        first = self.drawn if script.draw else 0
        raw_prompt = None if endpoint == "chat" else _prompt_text(body["prompt"])
        budget = body.get("thinking_token_budget") if self.flavor.name == "vllm" else None
        samples = []
        for i in range(n):
            sample_script = script.sample(first + i)
            source = _generation(
                i, sample_script, script.reasoning, raw_prompt, prompt_words, budget
            )
            samples.append(_plan_sample(i, sample_script, source, max_tokens, stops))
        if script.draw:
            self.drawn += n
        if endpoint == "chat":
            rendered = render_template(body["messages"], True, think_opened=self._think_opened())
            for sample in samples:
                self._prefix_store(_words(rendered + _raw_text(sample, script.reasoning)))
        return _Plan(
            endpoint=endpoint,
            id=self.flavor.completion_id(endpoint, rid),
            created=int(time.time()),
            model=self.flavor.response_model(str(body.get("model", DEFAULT_MODEL))),
            prompt_tokens=prompt_tokens,
            cached_tokens=cached,
            samples=samples,
            stream=bool(body.get("stream")),
            include_usage=bool(options.get("include_usage")),
            continuous_usage=self.flavor.name in ("vllm", "sglang")
            and bool(options.get("include_usage"))
            and bool(options.get("continuous_usage_stats")),
            logprobs=logprobs,
            chat_logprobs=endpoint == "chat" and logprobs is not None,
            reasoning=script.reasoning,
            reasoning_field=script.reasoning_field,
        )

    def _prefix_lookup(self, words: list[str]) -> int:
        """Tokens of the prompt found in the (never evicted) prefix cache; counts the query."""
        hits = 0
        missed = False
        for key in _block_keys(words):
            if not missed and key in self._prefix_blocks:
                hits += PREFIX_BLOCK_TOKENS
            else:
                missed = True
                self._prefix_blocks.add(key)
        self.counters.prefix_queries += len(words)
        self.counters.prefix_hits += hits
        return hits

    def _prefix_store(self, words: list[str]) -> None:
        """Keep the full blocks of ``words`` (a prompt and what was generated after it)."""
        self._prefix_blocks.update(_block_keys(words))

    # -- responding ---------------------------------------------------------------------------
    async def _respond(self, plan: _Plan, script: Script, running: _Running, send: Send) -> None:
        if script.hang:
            await asyncio.Future()  # only a disconnect or an abort ends this
        if not plan.stream:
            await asyncio.sleep(max((s.end_time for s in plan.samples), default=0.0))
            running.tokens = sum(len(s.tokens) for s in plan.samples)
            if script.malformed:
                running.headers_sent = True
                await _send(send, 200, b'{"id": "broken", "choices": [', b"application/json")
                return
            running.headers_sent = True
            await _send_json(send, 200, self._final_object(plan))
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
            }
        )
        running.headers_sent = True
        sent = 0

        async def emit(payload: bytes) -> None:
            nonlocal sent
            if script.die_after_chunks is not None and sent >= script.die_after_chunks:
                if script.die_cleanly:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    await asyncio.Future()  # the client sees the end; wait for it to go
                raise StandinDied(f"scripted death after {sent} chunks")
            if script.malformed and sent >= len(plan.samples):
                payload = b'data: {"id": "broken", "choices": [{"ind\n\n'
            await send({"type": "http.response.body", "body": payload, "more_body": True})
            sent += 1

        loop = asyncio.get_running_loop()
        start = loop.time()
        for at, chunk in self._stream_events(plan, running):
            delay = start + at - loop.time()
            await asyncio.sleep(max(0.0, delay))  # also lets a disconnect be noticed
            await emit(b"data: " + orjson.dumps(chunk()) + b"\n\n")
        await emit(b"data: [DONE]\n\n")
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _stream_events(
        self, plan: _Plan, running: _Running
    ) -> list[tuple[float, Callable[[], dict[str, Any]]]]:
        """(time, chunk factory) in send order; choices interleave by token position."""
        keyed: list[tuple[float, int, int, Callable[[], dict[str, Any]]]] = []
        chat = plan.endpoint == "chat"
        produced = {s.index: 0 for s in plan.samples}

        def chunk(choice: dict[str, Any], usage: dict[str, Any] | None = None) -> dict[str, Any]:
            out = self._chunk_envelope(plan, [choice])
            if usage is not None:
                out["usage"] = usage
            return out

        def usage_of(sample: _Sample) -> dict[str, Any] | None:
            if not plan.continuous_usage:
                return None
            return _usage(plan.prompt_tokens, produced[sample.index])

        for sample in plan.samples:
            i = sample.index
            if chat:

                def role(sample: _Sample = sample) -> dict[str, Any]:
                    delta = {"role": "assistant", "content": self.flavor.role_content}
                    choice = {
                        "index": sample.index,
                        "delta": delta,
                        "logprobs": None,
                        "finish_reason": None,
                    }
                    if self.flavor.name == "llamacpp":
                        del choice["logprobs"]
                    return chunk(choice, usage_of(sample))

                keyed.append((0.0, -1, i, role))
            last = len(sample.tokens) - 1
            for k, at in enumerate(sample.times):
                finishing = k == last and self.flavor.finish_on_last_token
                if not sample.deltas[k] and not finishing:
                    continue

                def token(
                    sample: _Sample = sample, k: int = k, finishing: bool = finishing
                ) -> dict[str, Any]:
                    produced[sample.index] = k + 1
                    running.tokens += 1
                    choice = self._stream_choice(plan, sample, sample.deltas[k], k, sample.kinds[k])
                    if finishing:
                        choice["finish_reason"] = sample.finish_reason
                        choice.update(self.flavor.choice_extras(sample.finish_reason, sample.stop))
                    return chunk(choice, usage_of(sample))

                keyed.append((at, k, i, token))
            if not self.flavor.finish_on_last_token or not sample.tokens:

                def finish(sample: _Sample = sample) -> dict[str, Any]:
                    produced[sample.index] = len(sample.tokens)
                    choice = self._stream_choice(plan, sample, None, None)
                    choice["finish_reason"] = sample.finish_reason
                    choice.update(self.flavor.choice_extras(sample.finish_reason, sample.stop))
                    out = chunk(choice, usage_of(sample))
                    if self.flavor.usage_per_choice and not chat:
                        # llama.cpp text completions: usage rides on each finish chunk
                        out["usage"] = self._usage_for(plan, [sample])
                        out.update(self.flavor.top_extras(plan.prompt_tokens, len(sample.tokens)))
                    return out

                keyed.append((sample.end_time, len(sample.tokens), i, finish))
                if self.flavor.usage_per_choice and chat and plan.include_usage:

                    def own_usage(sample: _Sample = sample) -> dict[str, Any]:
                        out = self._chunk_envelope(plan, [])
                        out["usage"] = self._usage_for(plan, [sample])
                        out.update(self.flavor.top_extras(plan.prompt_tokens, len(sample.tokens)))
                        return out

                    keyed.append((sample.end_time, len(sample.tokens) + 1, i, own_usage))
        keyed.sort(key=lambda e: (e[0], e[1], e[2]))
        events: list[tuple[float, Callable[[], dict[str, Any]]]] = [(t, f) for t, _, _, f in keyed]
        if plan.include_usage and not self.flavor.usage_per_choice:
            end = max((s.end_time for s in plan.samples), default=0.0)

            def final_usage() -> dict[str, Any]:
                out = self._chunk_envelope(plan, [])
                out["usage"] = self._usage_for(plan, plan.samples)
                return out

            events.append((end, final_usage))
        return events

    def _chunk_envelope(self, plan: _Plan, choices: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": plan.id,
            "object": "chat.completion.chunk" if plan.endpoint == "chat" else "text_completion",
            "created": plan.created,
            "model": plan.model,
            "choices": choices,
        }
        if self.flavor.system_fingerprint and (self.flavor.name != "vllm" or not choices):
            out["system_fingerprint"] = self.flavor.system_fingerprint
        return out

    def _stream_choice(
        self, plan: _Plan, sample: _Sample, text: str | None, k: int | None, kind: str = CONTENT
    ) -> dict[str, Any]:
        logprobs = None
        if plan.logprobs is not None and k is not None:
            logprobs = self._logprobs(plan, sample, k, k + 1)
        if plan.endpoint == "chat":
            key = plan.reasoning_field if kind == REASONING else "content"
            delta: dict[str, Any] = {} if text is None else {key: text}
            choice: dict[str, Any] = {"index": sample.index, "delta": delta}
        else:
            choice = {"index": sample.index, "text": text or ""}
        if self.flavor.name != "llamacpp" or plan.endpoint != "chat" or logprobs is not None:
            choice["logprobs"] = logprobs
        choice["finish_reason"] = None
        return choice

    def _final_object(self, plan: _Plan) -> dict[str, Any]:
        choices = []
        for s in plan.samples:
            logprobs = (
                self._logprobs(plan, s, 0, len(s.tokens)) if plan.logprobs is not None else None
            )
            if plan.endpoint == "chat":
                message = {"role": "assistant", "content": s.text, **self.flavor.message_extras()}
                if plan.reasoning == "field":  # a reasoning parser's split: missing parts null
                    message["content"] = s.text or None
                    message[plan.reasoning_field] = s.reasoning or None
                choice: dict[str, Any] = {"index": s.index, "message": message}
            else:
                choice = {"index": s.index, "text": s.text}
            if self.flavor.name != "llamacpp" or logprobs is not None or plan.endpoint != "chat":
                choice["logprobs"] = logprobs
            choice["finish_reason"] = s.finish_reason
            choice.update(self.flavor.choice_extras(s.finish_reason, s.stop, final=True))
            choices.append(choice)
        out: dict[str, Any] = {
            "id": plan.id,
            "object": "chat.completion" if plan.endpoint == "chat" else "text_completion",
            "created": plan.created,
            "model": plan.model,
            "choices": choices,
        }
        if self.flavor.system_fingerprint:
            out["system_fingerprint"] = self.flavor.system_fingerprint
        counted = plan.samples[:1] if self.flavor.usage_per_choice else plan.samples
        out["usage"] = self._usage_for(plan, counted)
        out.update(self.flavor.top_extras(plan.prompt_tokens, len(plan.samples[0].tokens)))
        return out

    def _usage_for(self, plan: _Plan, samples: list[_Sample]) -> dict[str, Any]:
        usage = _usage(plan.prompt_tokens, sum(len(s.tokens) for s in samples))
        if self.flavor.name in ("llamacpp", "sglang", "openai"):
            usage["prompt_tokens_details"] = {"cached_tokens": plan.cached_tokens}
        return usage

    def _logprobs(self, plan: _Plan, sample: _Sample, start: int, end: int) -> dict[str, Any]:
        top_n = plan.logprobs or 0
        tokens = sample.tokens[start:end]
        values = sample.logprobs[start:end]
        with_id = self.flavor.name == "llamacpp"

        def alternatives(tok: str, lp: float) -> list[tuple[str, float]]:
            alts = [(tok, lp)] + [(f"alt{j}", lp - 1.0 - j) for j in range(top_n)]
            return alts[:top_n]

        if plan.chat_logprobs or with_id:  # llama.cpp uses the chat shape for text too
            content = []
            for tok, lp in zip(tokens, values, strict=True):
                entry: dict[str, Any] = {"token": tok, "logprob": lp, "bytes": list(tok.encode())}
                if with_id:
                    entry["id"] = _token_id(tok)
                entry["top_logprobs"] = [
                    {"token": t, "logprob": v, "bytes": list(t.encode())}
                    for t, v in alternatives(tok, lp)
                ]
                content.append(entry)
            return {"content": content}
        offsets, pos = [], 0
        for tok in sample.tokens[:start]:
            pos += len(tok)
        for tok in tokens:
            offsets.append(pos)
            pos += len(tok)
        return {
            "tokens": tokens,
            "token_logprobs": values,
            "top_logprobs": [dict(alternatives(t, v)) for t, v in zip(tokens, values, strict=True)],
            "text_offset": offsets,
        }

    async def _send_abort_tail(self, plan: _Plan, running: _Running, send: Send) -> None:
        """What SGLang answers for a request stopped by ``/abort_request``."""
        if plan.stream and running.headers_sent:
            for sample in plan.samples:
                choice = self._stream_choice(plan, sample, None, None)
                choice["finish_reason"] = "abort"
                choice.update(self.flavor.choice_extras("abort", None))
                payload = orjson.dumps(self._chunk_envelope(plan, [choice]))
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"data: " + payload + b"\n\n",
                        "more_body": True,
                    }
                )
            await send(
                {"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False}
            )
        elif not running.headers_sent:
            await _send_json(send, 400, self.flavor.error_body(400, "Request was aborted"))


_RENDER_PATHS = {"llamacpp": ("/apply-template",), "vllm": ("/tokenize", "/detokenize")}


def render_template(
    messages: list[Any], add_generation_prompt: bool, *, think_opened: bool = False
) -> str:
    """The stand-ins' chat template: ``<|role|>\ncontent\n`` per message; a template that opens
    the thinking (``think_opened``) ends its generation prompt with ``<think>\n``."""
    text = "".join(
        f"<|{m.get('role', 'user')}|>\n{m.get('content') or ''}\n"
        for m in messages
        if isinstance(m, dict)
    )
    if not add_generation_prompt:
        return text
    return text + "<|assistant|>\n" + (THINK_OPEN + "\n" if think_opened else "")


# -- planning helpers -------------------------------------------------------------------------
def _words(text: str) -> list[str]:
    """The stand-in's prompt tokens: whitespace-separated words, each thinking tag a word."""
    for tag in (THINK_OPEN, THINK_CLOSE):
        text = text.replace(tag, f" {tag} ")
    return text.split()


def _block_keys(words: list[str]) -> list[bytes]:
    """One key per full block of ``words``, each covering the whole prefix up to its end."""
    keys = []
    digest = hashlib.blake2b(digest_size=16)
    for start in range(0, len(words) - len(words) % PREFIX_BLOCK_TOKENS, PREFIX_BLOCK_TOKENS):
        digest.update("\x00".join(words[start : start + PREFIX_BLOCK_TOKENS]).encode())
        keys.append(digest.digest())
    return keys


def _prompt_text(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else " ".join(map(str, prompt))


def _prompt_words(body: dict[str, Any], endpoint: str) -> list[str]:
    if endpoint == "chat":
        parts = []
        for message in body["messages"]:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            parts.append(str(content or ""))
        text = " ".join(parts)
    else:
        text = _prompt_text(body["prompt"])
    return _words(text)


def _default_tokens(index: int, prompt_words: list[str]) -> list[str]:
    """A few deterministic tokens derived from the prompt (different per choice)."""
    return ["Sample", f" {index}", ":", *(" " + w for w in prompt_words[-4:])]


def _generation(
    index: int,
    script: SampleScript,
    reasoning: str,
    raw_prompt: str | None,
    prompt_words: list[str],
    thinking_budget: int | None,
) -> list[tuple[str, str]]:
    """Every token the model would write for one choice, with its kind, before ``max_tokens``
    and stop strings. ``raw_prompt``: a text completion's prompt (None for chat), which the
    model continues from where it stops: after ``</think>`` only the answer is left."""
    answer = script.tokens()
    if answer is None:
        answer = _default_tokens(index, prompt_words)
    content = [(tok, CONTENT) for tok in answer]
    if reasoning == "none":
        return content
    thinking = script.thinking_tokens()
    writes_open_tag = reasoning != "opened"
    if raw_prompt is not None:
        opened_at = raw_prompt.rfind(THINK_OPEN)
        if THINK_CLOSE in raw_prompt[max(opened_at, 0) :]:
            return content
        if opened_at >= 0:
            written = raw_prompt[opened_at + len(THINK_OPEN) :]
            thinking = thinking[_thought_already(written, thinking) :]
            writes_open_tag = False
    if thinking_budget is not None:
        thinking = thinking[:thinking_budget]
    if reasoning == "field" and raw_prompt is None:  # the parser drops the tags
        return [(tok, REASONING) for tok in thinking] + content
    tags_around = [*([THINK_OPEN] if writes_open_tag else []), *thinking, THINK_CLOSE, "\n\n"]
    return [(tok, CONTENT) for tok in tags_around] + content


def _thought_already(written: str, thinking: list[str]) -> int:
    """How many of the leading ``thinking`` tokens the prompt already holds after ``<think>``."""
    written = written.lstrip()
    done, text = 0, ""
    for tok in thinking:
        text += tok
        if not written.startswith(text.lstrip()):
            break
        done += 1
    return done


def _raw_text(sample: _Sample, reasoning: str) -> str:
    """What the model wrote, as its engine keeps it (a parser's tags put back)."""
    if reasoning != "field":
        return "".join(sample.tokens)
    thought = [t for t, kind in zip(sample.tokens, sample.kinds, strict=True) if kind == REASONING]
    answer = [t for t, kind in zip(sample.tokens, sample.kinds, strict=True) if kind == CONTENT]
    closing = THINK_CLOSE + "\n\n" if answer else ""
    return THINK_OPEN + "".join(thought) + closing + "".join(answer)


def _plan_sample(
    index: int,
    script: SampleScript,
    source_kinds: list[tuple[str, str]],
    max_tokens: int | None,
    stops: list[str],
) -> _Sample:
    source = [tok for tok, _ in source_kinds]
    generated: list[str] = []
    visible_len: int | None = None
    stop: str | None = None
    finish = script.finish_reason or "stop"
    text = ""
    for tok in source:
        if max_tokens is not None and len(generated) >= max_tokens:
            break
        generated.append(tok)
        text += tok
        found = [(text.find(s), s) for s in stops if s and s in text]
        if found:
            visible_len, stop = min(found)
            finish = "stop"
            break
    if stop is None and max_tokens is not None and len(generated) >= max_tokens < len(source):
        finish = "length"
    visible = text if visible_len is None else text[:visible_len]
    deltas, shown, pos = [], 0, 0
    for tok in generated:
        pos += len(tok)
        upto = min(pos, len(visible))
        deltas.append(visible[shown:upto])
        shown = upto
    first = script.first_token_delay_s
    first = script.token_delay_s if first is None else first
    times = [first + k * script.token_delay_s for k in range(len(generated))]
    pattern = script.logprobs or [-0.05 * (1 + k % 4) for k in range(len(generated))]
    logprobs = [pattern[k % len(pattern)] for k in range(len(generated))] if pattern else []
    kinds = [kind for _, kind in source_kinds[: len(generated)]]
    return _Sample(index, generated, deltas, kinds, times, logprobs, finish, stop)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }


def _token_id(token: str) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=2).digest(), "big")


# -- ASGI helpers -----------------------------------------------------------------------------
async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _send(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Send, status: int, payload: Any) -> None:
    await _send(send, status, orjson.dumps(payload), b"application/json")


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


__all__ = ["ReceivedRequest", "StandinDied", "StandinEngine", "split_tokens"]

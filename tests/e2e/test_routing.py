"""Routing across requests on two real llama.cpp workers: every turn lands where its prefix is
cached, and the engine's own ``cached_tokens`` proves it.

The official ``openai`` SDK talks to the gateway CLI; the workers are named (``left``,
``right``) and the answers say which one served them (``X-TTC-Worker``, ``ttc.worker``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.processes import gateway_cli, llamacpp_worker, quiet_server

pytestmark = pytest.mark.llamacpp

# About 700 tokens: long enough that a cached prefix is most of the prompt.
SYSTEM = "You are the support assistant of a bicycle shop. " + " ".join(
    f"Rule {i}: answer politely and mention part number {1000 + i}." for i in range(50)
)


@pytest.fixture(scope="module")
def workers() -> Iterator[list[str]]:
    with (
        llamacpp_worker(parallel=2, context=4096) as (left, _),
        llamacpp_worker(parallel=2, context=4096) as (right, _),
    ):
        yield [left, right]


@contextlib.contextmanager
def gateway(workers: list[str], routing: dict[str, Any] | None = None) -> Iterator[str]:
    pool: dict[str, Any] = {
        "name": "llama",
        "engine": "llamacpp",
        "model": "smollm2",
        "workers": [
            {"url": url, "name": name} for url, name in zip(workers, ("left", "right"), strict=True)
        ],
    }
    if routing is not None:
        pool["routing"] = routing
    config = {"server": quiet_server(), "pools": [pool]}
    with gateway_cli(config) as (url, _):
        yield url


def decisions(gateway_url: str, outcome: str) -> float:
    text = httpx.get(gateway_url + "/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ttc_routing_decisions_total{") and f'outcome="{outcome}"' in line
    )


def ask(client: openai.OpenAI, messages: list[Any], **extra: Any) -> tuple[str, str, int, int]:
    """(worker, reply, prompt tokens, cached prompt tokens) of one answer."""
    raw = client.chat.completions.with_raw_response.create(
        model="smollm2", messages=messages, max_tokens=12, temperature=0, **extra
    )
    answer = raw.parse()
    worker = raw.headers["x-ttc-worker"]
    assert (answer.model_extra or {})["ttc"]["worker"] == worker
    assert answer.usage is not None and answer.usage.prompt_tokens_details is not None
    cached = answer.usage.prompt_tokens_details.cached_tokens or 0
    return worker, answer.choices[0].message.content or "", answer.usage.prompt_tokens, cached


def test_cache_aware_keeps_a_conversation_and_a_shared_system_prompt_on_one_worker(
    workers: list[str],
) -> None:
    with gateway(workers) as url:  # two workers: cache_aware by default
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        messages: list[Any] = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Do you sell tyres?"},
        ]
        home, reply, first_prompt, _ = ask(client, messages)
        assert home in ("left", "right")
        for turn in ("Which sizes?", "And inner tubes?"):
            messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": turn}]
            worker, reply, prompt, cached = ask(client, messages)
            assert worker == home
            # the engine served at least the first turn's prompt from its cache
            assert cached >= first_prompt - 8, (cached, first_prompt, prompt)
        # another conversation with the same system prompt: the same worker, its cache
        other = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hours?"}]
        worker, _, prompt, cached = ask(client, other)
        assert worker == home
        assert cached >= first_prompt - 20
        assert decisions(url, "hit") == 3 and decisions(url, "miss") == 1

        # k samples of a strategy go, as one request, to the worker holding the prefix
        raw = client.chat.completions.with_raw_response.create(
            model="smollm2",
            messages=other,
            max_tokens=8,
            temperature=0.7,
            extra_headers={"X-TTC-Strategy": "majority_vote", "X-TTC-K": "2"},
        )
        report = (raw.parse().model_extra or {})["ttc"]
        assert [p["worker"] for p in report["placement"]] == [home]
        assert report["worker"] == raw.headers["x-ttc-worker"] == home

        # an unrelated prompt misses and goes to the idle worker... both are idle here, so
        # to whichever is next in turn; what matters is that it is a miss
        ask(client, [{"role": "user", "content": "Write one word about the moon."}])
        assert decisions(url, "miss") == 2


def test_session_policy_keeps_a_session_or_a_user_on_its_worker(workers: list[str]) -> None:
    with gateway(workers, {"policy": "session"}) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        seen: dict[str, set[str]] = {}
        for session in ("alice", "bob", "carol", "dave", "erin", "frank"):
            messages: list[Any] = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"I am {session}. Hello!"},
            ]
            for turn in range(2):
                # the header, or the OpenAI `user` field when there is no header
                header = {"extra_headers": {"X-TTC-Session": session}}
                extra: dict[str, Any] = header if turn == 0 else {"user": session}
                worker, reply, _, cached = ask(client, messages, **extra)
                seen.setdefault(session, set()).add(worker)
                if turn:
                    assert cached > 0
                messages += [
                    {"role": "assistant", "content": reply},
                    {"role": "user", "content": "Thanks."},
                ]
        assert all(len(w) == 1 for w in seen.values()), seen
        assert {w for ws in seen.values() for w in ws} == {"left", "right"}  # spread over both
        assert decisions(url, "hit") == 12


def test_streamed_answers_name_their_worker(workers: list[str]) -> None:
    with gateway(workers) as url:
        response = httpx.post(
            url + "/v1/chat/completions",
            json={
                "model": "smollm2",
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 4,
                "stream": True,
            },
            timeout=60,
        )
        assert response.status_code == 200
        assert response.headers["x-ttc-worker"] in ("left", "right")
        assert workers[0].rsplit(":", 1)[1] not in response.text  # never an address

"""An optional cache of whole answers to deterministic requests (``cache.enabled``).

Only requests whose answer does not depend on chance are cached: ``temperature`` 0 or a fixed
``seed``, not streamed. The key is a SHA-256 of everything that shapes the answer: the endpoint,
the model, the strategy with all its parameters after validation (defaults included), the
budgets, the body without ``stream``/``user``, and (``cache.per_key``, the default) the API key,
so that one key never learns what another asked. Different strategies or parameters can never
share an entry. A hit answers with the stored body and headers plus ``X-TTC-Cache: hit``; it
costs the key nothing. Answers cut short by a budget (``ttc.truncated``) are not stored.

Storage: Redis when ``state.redis_url`` is set (shared by the replicas, ``SET ... EX ttl``), else
a bounded LRU in process memory. A cache that fails is a miss, never an error.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.config import ResponseCacheConfig, SharedStateConfig
from gateway.metrics import GatewayMetrics
from strategies import Budgets

log = logging.getLogger("ttc.cache")

# Fields that change how the answer is delivered, not what it is.
_DELIVERY_FIELDS = frozenset({"stream", "stream_options", "user", "ttc"})


@dataclass(frozen=True)
class CachedAnswer:
    body: bytes
    headers: dict[str, str]

    def encode(self) -> bytes:
        return orjson.dumps({"headers": self.headers, "body": self.body.decode()})

    @classmethod
    def decode(cls, raw: bytes) -> CachedAnswer:
        data = orjson.loads(raw)
        return cls(data["body"].encode(), dict(data["headers"]))


class AnswerStore(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def put(self, key: str, value: bytes) -> None: ...
    async def close(self) -> None: ...


class MemoryAnswerStore:
    """At most ``max_entries`` answers, least recently used out first, each for ``ttl_s``."""

    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if time.monotonic() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes) -> None:
        self._entries[key] = (time.monotonic() + self.ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def close(self) -> None:
        return None


class RedisAnswerStore:
    def __init__(self, url: str, ttl_s: float, timeout_s: float) -> None:
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )

    async def get(self, key: str) -> bytes | None:
        value = await self._redis.get(f"ttc:cache:{key}")
        if value is None:
            return None
        return value if isinstance(value, bytes) else str(value).encode()

    async def put(self, key: str, value: bytes) -> None:
        await self._redis.set(f"ttc:cache:{key}", value, px=self.ttl_ms)

    async def close(self) -> None:
        await self._redis.aclose()


def is_deterministic(body: Mapping[str, Any]) -> bool:
    temperature = body.get("temperature")
    return (temperature is not None and float(temperature) == 0.0) or body.get("seed") is not None


class ResponseCache:
    """``lookup`` before a request's upstream calls, ``store`` after its answer."""

    def __init__(
        self, config: ResponseCacheConfig, store: AnswerStore, metrics: GatewayMetrics
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics

    @classmethod
    def open(
        cls, config: ResponseCacheConfig, state: SharedStateConfig, metrics: GatewayMetrics
    ) -> ResponseCache | None:
        if not config.enabled:
            return None
        store: AnswerStore
        if state.redis_url:
            store = RedisAnswerStore(state.redis_url, config.ttl_s, state.timeout_s)
        else:
            store = MemoryAnswerStore(config.ttl_s, config.max_entries)
        return cls(config, store, metrics)

    def key(
        self,
        *,
        endpoint: str,
        model: str,
        strategy: str,
        params: Mapping[str, Any],
        budgets: Budgets,
        body: Mapping[str, Any],
        key_id: str | None,
    ) -> str | None:
        """The entry's key, or None when the request must not be cached."""
        if body.get("stream") or not is_deterministic(body):
            self.metrics.response_cache.labels("skipped").inc()
            return None
        material = {
            "endpoint": endpoint,
            "model": model,
            "strategy": strategy,
            "params": dict(params),
            "budgets": repr(budgets),
            "body": {k: v for k, v in body.items() if k not in _DELIVERY_FIELDS},
            "key": key_id if self.config.per_key else None,
        }
        encoded = orjson.dumps(material, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
        return hashlib.sha256(encoded).hexdigest()

    async def lookup(self, key: str) -> CachedAnswer | None:
        try:
            raw = await self.store.get(key)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("get", exc)
            return None
        self.metrics.response_cache.labels("hit" if raw is not None else "miss").inc()
        return CachedAnswer.decode(raw) if raw is not None else None

    async def store_answer(self, key: str, answer: CachedAnswer) -> None:
        try:
            await self.store.put(key, answer.encode())
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("put", exc)

    def _failed(self, operation: str, exc: BaseException) -> None:
        self.metrics.response_cache.labels("error").inc()
        log.warning("response cache %s failed (treated as a miss): %s", operation, exc)

    async def close(self) -> None:
        await self.store.close()

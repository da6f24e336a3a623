"""Who may call the gateway, and how much: API keys, rate limits and USD budgets.

``AccessControl.admit`` runs before any upstream call. It reads the key from
``Authorization: Bearer <key>``, and asks the key store (``gateway.access.stores``) to let the
request in and reserve its worst case: the strategy's ``TokenBound`` for this prompt and
``max_tokens`` against tokens/minute, and that bound priced at the dearest configured model
against the key's budget. ``Admission.settle`` replaces the reservation with what the request
used (its tokens, and its price-table cost) when the request ends, however it ends. A rejected
request reserves nothing and costs nothing.

When the store fails (Redis down or slow) nothing becomes a 500. ``state.on_failure: closed``
answers 503 with Retry-After; ``open`` (the default) lets in keys this replica admitted before
(limits are not enforced meanwhile; settlements are kept and replayed when Redis is back) and
answers 503 for keys it has never seen. Each transition is logged once; ``ttc_shared_state_up``
shows the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from gateway.access.stores import (
    RESERVATION_MARGIN_S,
    WINDOW_S,
    AdmitResult,
    KeyFile,
    KeyRecord,
    KeyStore,
    MemoryKeyStore,
    RedisKeyStore,
    Reservation,
    StateUnavailable,
    hash_secret,
    minute_window,
    new_admission_id,
    to_nusd,
)
from gateway.config import AuthConfig, SharedStateConfig
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from gateway.metering.meter import PriceBook
from gateway.metrics import GatewayMetrics
from strategies.base import TokenBound

E = TypeVar("E", bound=GatewayError)

log = logging.getLogger("ttc.access")

HAS_KEYS_TTL_S = 1.0  # how long "does any key exist" is remembered (auth.mode auto)
KNOWN_KEYS = 10_000  # keys remembered for on_failure=open
PENDING_SETTLEMENTS = 100_000  # settlements kept while Redis is down
REPLAY_INTERVAL_S = 1.0  # how often settlements kept while Redis was down are retried


def open_store(
    auth: AuthConfig, state: SharedStateConfig, request_timeout_s: float | None = None
) -> KeyStore:
    """The key store: Redis when ``state.redis_url``, else memory (and the keys file).
    ``request_timeout_s``: the gateway's request deadline, past which (and a margin) an
    unsettled reservation is taken to be a stopped replica's (None: a store that admits
    nothing, the ``keys`` command's)."""
    if state.redis_url:
        if request_timeout_s is None:
            return RedisKeyStore(state.redis_url, state.timeout_s)
        ttl = request_timeout_s + RESERVATION_MARGIN_S
        return RedisKeyStore(state.redis_url, state.timeout_s, reservation_ttl_s=ttl)
    return MemoryKeyStore(KeyFile(auth.keys_file) if auth.keys_file else None)


def redacted_url(url: str) -> str:
    """A Redis URL fit for a log line: without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


@dataclass(frozen=True)
class PriceCeiling:
    """The dearest input and output prices among the models this gateway serves: a request's
    worst case priced at these is an upper bound whatever pools its strategy uses."""

    input_usd: float
    output_usd: float

    @classmethod
    def of(cls, prices: PriceBook, models: Iterable[str]) -> PriceCeiling:
        known = [prices.models[m] for m in models if m in prices.models]
        return cls(
            max((p.input_cost_per_token for p in known), default=0.0),
            max((p.output_cost_per_token for p in known), default=0.0),
        )

    def cost(self, bound: TokenBound) -> float:
        return bound.prompt_tokens * self.input_usd + bound.completion_tokens * self.output_usd


@dataclass
class Admission:
    """A request that was let in. ``settle`` once it has ended (idempotent)."""

    key_id: str | None
    reservation: Reservation | None
    access: AccessControl | None = None
    settled: bool = False

    async def settle(self, tokens: int, cost_usd: float) -> None:
        if self.settled:
            return
        self.settled = True
        if self.access is not None and self.reservation is not None:
            await self.access.settle(self.reservation, tokens, cost_usd)


OPEN = Admission(key_id=None, reservation=None)


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class AccessControl:
    """Authentication, limits and budgets for one gateway process."""

    def __init__(
        self,
        auth: AuthConfig,
        state: SharedStateConfig,
        store: KeyStore,
        metrics: GatewayMetrics,
        prices: PriceCeiling,
    ) -> None:
        self.auth = auth
        self.on_failure = state.on_failure
        self.store = store
        self.metrics = metrics
        self.prices = prices
        self.backend = "redis" if isinstance(store, RedisKeyStore) else "memory"
        self._has_keys: tuple[float, bool] | None = None
        self._known: OrderedDict[str, KeyRecord] = OrderedDict()
        self._pending: deque[tuple[Reservation, int, int]] = deque(maxlen=PENDING_SETTLEMENTS)
        # Admissions refused while the store timed out, which may have reserved there: each is
        # released by a settlement of nothing (kept apart: they never push out a real one).
        self._releases: deque[tuple[Reservation, int, int]] = deque(maxlen=PENDING_SETTLEMENTS)
        # One replay at a time: two would settle the same first one twice, then drop the next.
        self._replaying = asyncio.Lock()
        self._replayer: asyncio.Task[None] | None = None
        self._degraded = False
        metrics.shared_state_up.labels(self.backend).set(1)

    async def start(self) -> None:
        """Say where keys live, and whether that store answers (a Redis that does not is
        logged and then handled by the failure policy, request by request)."""
        where = redacted_url(self.store.url) if isinstance(self.store, RedisKeyStore) else "memory"
        try:
            await self.store.ping()
            log.info("API keys and limits: %s (auth.mode=%s)", where, self.auth.mode)
        except StateUnavailable as exc:
            self._unhealthy("ping", exc)
        self._replayer = asyncio.create_task(self._replay_loop(), name="settlement-replay")

    async def close(self) -> None:
        if self._replayer is not None:
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replayer
        await self._replay()
        await self.store.close()

    # -- admission --------------------------------------------------------------------------
    async def admit(
        self,
        authorization: str | None,
        strategy: str,
        k: int,
        worst_case: Callable[[], TokenBound],
    ) -> Admission:
        """Let a request in (``Admission``) or raise the ``GatewayError`` that says why not.
        ``worst_case`` is only computed when a key's limits are checked."""
        if self.auth.mode == "off":
            return OPEN
        secret = _bearer(authorization)
        # Made before asking: if the store's answer is lost, the settlement still names it.
        admission_id, now = new_admission_id(), time.time()
        asked: str | None = None  # the key hash the store was asked to admit
        try:
            if self.auth.mode == "auto" and not await self._keys_exist(secret is not None):
                return OPEN
            if secret is None:
                raise _denied(
                    Unauthenticated,
                    "This gateway requires an API key: send `Authorization: Bearer <key>`",
                    "missing_api_key",
                    "missing_key",
                    self.metrics,
                )
            key_hash = hash_secret(secret)
            bound = worst_case()
            tokens = bound.total
            nusd = to_nusd(self.prices.cost(bound), round_up=True)
            asked = key_hash
            result = await self.store.admit(key_hash, strategy, k, tokens, nusd, now, admission_id)
        except StateUnavailable as exc:
            return self._degraded_admit(secret, exc, asked, admission_id, now)
        self._healthy()
        await self._replay()
        if result.verdict != "ok":
            raise self._rejection(result, strategy, k, bound)
        assert result.record is not None
        self._remember(result.record)
        return Admission(result.record.id, result.reservation, self)

    async def may_see_internals(self, authorization: str | None) -> bool:
        """Whether a caller may see the workers behind the gateway (``/ready`` detail): always
        while no key is required, else only with ``auth.admin_token``."""
        secret = _bearer(authorization)
        admin = self.auth.admin_token
        if (
            admin is not None
            and secret is not None
            and hmac.compare_digest(secret.encode(), admin.encode())
        ):
            return True
        if self.auth.mode == "off":
            return True
        if self.auth.mode == "on":
            return False
        try:
            return not await self._keys_exist()
        except StateUnavailable:
            return False

    async def _keys_exist(self, key_presented: bool = False) -> bool:
        """Whether any key exists (``auth.mode: auto`` is open until one does), remembered
        for ``HAS_KEYS_TTL_S``. A request that presents a key while the memo says "none" asks
        the store again: a key created within that second must be checked and charged, not
        let through open."""
        now = time.monotonic()
        if (
            self._has_keys is None
            or now - self._has_keys[0] > HAS_KEYS_TTL_S
            or (key_presented and not self._has_keys[1])
        ):
            self._has_keys = (now, await self.store.has_keys())
        return self._has_keys[1]

    def _remember(self, record: KeyRecord) -> None:
        self._known[record.key_hash] = record
        self._known.move_to_end(record.key_hash)
        while len(self._known) > KNOWN_KEYS:
            self._known.popitem(last=False)

    def _rejection(
        self, result: AdmitResult, strategy: str, k: int, bound: TokenBound
    ) -> GatewayError:
        record, m = result.record, self.metrics
        limits = record.limits if record is not None else None
        if result.verdict == "unknown" or limits is None:
            return _denied(
                Unauthenticated, "Incorrect API key provided", "invalid_api_key", "unknown_key", m
            )
        if result.verdict == "revoked":
            return _denied(
                Unauthenticated, "This API key was revoked", "invalid_api_key", "revoked_key", m
            )
        if result.verdict == "max_k":
            return _denied(
                PermissionDenied,
                f"k={k} is more samples than this API key may ask for (max_k={limits.max_k})",
                "k_not_allowed",
                "max_k",
                m,
                param="X-TTC-K",
            )
        if result.verdict == "strategy":
            allowed = ", ".join(limits.strategies or ())
            return _denied(
                PermissionDenied,
                f"strategy {strategy!r} is not allowed for this API key (allowed: {allowed})",
                "strategy_not_allowed",
                "strategy",
                m,
                param="X-TTC-Strategy",
            )
        if result.verdict == "tpm_request":
            return _denied(
                InvalidRequest,
                f"this request may use up to {bound.total} tokens ({bound.prompt_tokens} prompt, "
                f"{bound.completion_tokens} generated over all samples), more than this API "
                f"key's {limits.tokens_per_minute} tokens per minute; lower max_tokens or k",
                "request_exceeds_limit",
                "tpm_request",
                m,
                param="max_tokens",
            )
        retry_after = max(1, math.ceil(WINDOW_S - time.time() % WINDOW_S))
        if result.verdict == "rpm":
            return _denied(
                RateLimited,
                f"Rate limit reached: {limits.requests_per_minute} requests per minute",
                "rate_limit_exceeded",
                "rpm",
                m,
                type="rate_limit_error",
                retry_after_s=retry_after,
                ratelimit={
                    "limit-requests": str(limits.requests_per_minute),
                    "remaining-requests": "0",
                },
            )
        if result.verdict == "tpm":
            return _denied(
                RateLimited,
                f"Rate limit reached: {limits.tokens_per_minute} tokens per minute (this request "
                f"reserves up to {bound.total})",
                "rate_limit_exceeded",
                "tpm",
                m,
                type="rate_limit_error",
                retry_after_s=retry_after,
                ratelimit={"limit-tokens": str(limits.tokens_per_minute)},
            )
        used = result.used_nusd / 1e9
        return _denied(
            QuotaExceeded,
            f"This API key's budget of ${limits.budget_usd:g} is used up: ${used:.6f} spent or "
            f"reserved, and this request may cost up to ${self.prices.cost(bound):.6f}",
            "insufficient_quota",
            "budget",
            m,
        )

    # -- settlement -------------------------------------------------------------------------
    async def settle(self, reservation: Reservation, tokens: int, cost_usd: float) -> None:
        nusd = to_nusd(cost_usd)
        try:
            await self.store.settle(reservation, tokens, nusd)
        except StateUnavailable as exc:
            self._pending.append((reservation, tokens, nusd))
            self._unhealthy("settle", exc)

    async def _replay(self) -> None:
        """Settlements that failed while the store was down, in order, once it answers: on
        the next admission, and every ``REPLAY_INTERVAL_S`` (so they do not wait for
        traffic)."""
        if not self._pending and not self._releases:
            return  # the usual case: nothing to do on the request path
        async with self._replaying:
            for waiting in (self._pending, self._releases):
                while waiting:
                    reservation, tokens, nusd = waiting[0]
                    try:
                        await self.store.settle(reservation, tokens, nusd)
                    except StateUnavailable as exc:
                        self._unhealthy("settle", exc)
                        return
                    waiting.popleft()
                    self._count_waiting()
            self._healthy()

    async def _replay_loop(self) -> None:
        while True:
            await asyncio.sleep(REPLAY_INTERVAL_S)
            try:
                await self._replay()
            except Exception:  # a bug here must not stop the retries
                log.exception("replaying settlements failed")

    # -- failure policy ---------------------------------------------------------------------
    def _degraded_admit(
        self,
        secret: str | None,
        exc: StateUnavailable,
        asked: str | None,
        admission_id: str,
        now: float,
    ) -> Admission:
        """``asked``: the key hash whose admission was sent to the store (None: the store
        failed before): it may have been admitted there, its answer lost."""
        self._unhealthy("admit", exc)
        if self.on_failure == "open":
            keys_existed = self._has_keys[1] if self._has_keys is not None else True
            if secret is None and self.auth.mode == "auto" and not keys_existed:
                return OPEN
            record = self._known.get(hash_secret(secret)) if secret else None
            if record is not None and not record.revoked:
                self.metrics.degraded_admissions.labels("open").inc()
                # Nothing reserved here; what it spends is settled (replayed) once the store is
                # back, under the id it was asked with: if that admission did reach Redis (its
                # answer was lost), the settlement releases what it reserved there.
                nothing = Reservation(record.key_hash, minute_window(now), 0, 0, admission_id)
                return Admission(record.id, nothing, self)
        self.metrics.degraded_admissions.labels("rejected").inc()
        if asked is not None and exc.answer_lost:
            # Refused here, yet perhaps admitted there: a settlement of nothing, replayed once
            # the store answers, releases what that admission reserved (if it ran at all).
            nothing = Reservation(asked, minute_window(now), 0, 0, admission_id)
            self._releases.append((nothing, 0, 0))
            self._count_waiting()
        raise Unavailable(
            "API keys cannot be checked right now (shared state unavailable); retry shortly",
            type="server_error",
            code="shared_state_unavailable",
            retry_after_s=1,
        )

    def _count_waiting(self) -> None:
        waiting = len(self._pending) + len(self._releases)
        self.metrics.shared_state_pending.labels(self.backend).set(waiting)

    def _unhealthy(self, operation: str, exc: StateUnavailable) -> None:
        self.metrics.shared_state_errors.labels(self.backend, operation).inc()
        self.metrics.shared_state_up.labels(self.backend).set(0)
        self._count_waiting()
        if not self._degraded:
            self._degraded = True
            log.warning(
                "shared state (%s) unavailable, policy on_failure=%s: %s",
                self.backend,
                self.on_failure,
                exc,
            )

    def _healthy(self) -> None:
        if self._degraded:
            self._degraded = False
            log.info("shared state (%s) is back", self.backend)
        self.metrics.shared_state_up.labels(self.backend).set(1)


def _denied(
    kind: type[E],
    message: str,
    code: str,
    reason: str,
    metrics: GatewayMetrics,
    **fields: Any,
) -> E:
    metrics.access_denied.labels(reason).inc()
    return kind(message, code=code, **fields)

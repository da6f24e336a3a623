"""Where API keys and their counters live: Redis for many replicas, process memory for one.

Both stores keep the same records and answer the same two questions atomically:

- ``admit``: may this key send a request of this strategy, k and size now? If so, count the
  request in this minute's window and reserve its worst-case tokens and cost, in one step, so
  replicas racing for the last unit of a limit can never both get it.
- ``settle``: the request ended; replace its reservation with what it really used.

Each admission carries an id (``Reservation.id``, made by the caller before it asks), and
``settle`` books an id once. A call whose answer was lost (a Redis timeout after the script
ran) is therefore safe to repeat: a settlement replayed after such a timeout is not booked
twice, and a settlement for an admission whose answer was lost releases what that admission
reserved (Redis remembers it under the id), instead of leaving it reserved for ever. A
reservation never settled (its replica stopped) is released once its request's deadline is
long past, by the first admission the budget would otherwise refuse.

Redis layout (one hash tag per key, so a cluster keeps a key's data in one slot)::

    ttc:keys                     set of key ids
    ttc:id:<id>                  -> sha256 of the secret
    ttc:{<sha256>}:key           hash: id name created revoked rpm tpm max_k strategies budget_nusd
    ttc:{<sha256>}:usage         hash: spent_nusd reserved_nusd
    ttc:{<sha256>}:rl:<minute>   hash: requests tokens   (expires after two minutes)
    ttc:{<sha256>}:held          hash: admission id -> "<reserved nusd> <reserved tokens>
                                 <expires at>" (requests admitted and not yet settled)
    ttc:{<sha256>}:settled:<minute>  hash: ids of the minute's admissions that were settled
                                 (expires ``SETTLED_TTL_S`` after its last settlement)

Money is counted in integer nano-dollars (``nusd``, 1e-9 USD): Lua numbers are doubles, exact
for integers up to 2**53 (9 million dollars), and sums of integers do not drift.

Rate windows are fixed calendar minutes of the gateway's clock (replicas are assumed NTP-synced):
within one minute a key's admitted requests never exceed its requests/minute, and the tokens
reserved or used by the requests admitted in it never exceed its tokens/minute.

Secrets are never stored: a key is ``ttc-`` + 43 random URL-safe characters (256 bits), and the
stores hold its SHA-256, which is enough for a secret of that entropy (no slow hash needed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("ttc.keys")

KEY_PREFIX = "ttc-"
NANO = 1_000_000_000
WINDOW_S = 60
WINDOW_TTL_S = 2 * WINDOW_S
# How long a settled admission's id is remembered, so that a settlement repeated after a lost
# answer is not booked twice (replays run every second while Redis answers). Memory: about 50
# bytes per request settled in the last 15 minutes.
SETTLED_TTL_S = 15 * 60
# Past the request deadline, how long a reservation is still taken for a live request's
# (settling takes a Redis call; one kept while Redis was down is booked however late it comes).
RESERVATION_MARGIN_S = 60.0


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def to_nusd(usd: float, *, round_up: bool = False) -> int:
    scaled = usd * NANO
    return math.ceil(scaled) if round_up else round(scaled)


def new_admission_id() -> str:
    """An admission's id: 64 random bits, unique among a key's requests of a minute."""
    return secrets.token_hex(8)


def minute_window(now: float) -> int:
    return int(now // WINDOW_S)


@dataclass(frozen=True)
class KeyLimits:
    """What a key may do; None means no limit."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_k: int | None = None
    strategies: tuple[str, ...] | None = None
    budget_usd: float | None = None


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    key_hash: str
    created: float
    revoked: bool = False
    limits: KeyLimits = field(default_factory=KeyLimits)


@dataclass(frozen=True)
class KeyUsage:
    spent_usd: float = 0.0
    reserved_usd: float = 0.0


Verdict = Literal[
    "ok", "unknown", "revoked", "max_k", "strategy", "rpm", "tpm", "tpm_request", "budget"
]


@dataclass(frozen=True)
class Reservation:
    """What ``admit`` set aside for one request (under the admission's id); handed back to
    ``settle``. The Redis store settles by the id against what Redis itself recorded."""

    key_hash: str
    window: int
    tokens: int
    nusd: int
    id: str


@dataclass(frozen=True)
class AdmitResult:
    verdict: Verdict
    record: KeyRecord | None = None
    reservation: Reservation | None = None
    used_nusd: int = 0  # spent + reserved, when the verdict is "budget"


class StateUnavailable(Exception):
    """The shared store could not be reached or did not answer in time. ``answer_lost``: the
    call was sent and timed out waiting, so it may have run."""

    def __init__(self, message: str, answer_lost: bool = False) -> None:
        super().__init__(message)
        self.answer_lost = answer_lost


class KeyStore(Protocol):
    """Key records and their counters (``MemoryKeyStore``, ``RedisKeyStore``)."""

    async def add(self, record: KeyRecord) -> None: ...
    async def records(self) -> list[tuple[KeyRecord, KeyUsage]]: ...
    async def update(self, key_id: str, **changes: Any) -> KeyRecord | None: ...
    async def has_keys(self) -> bool: ...
    async def admit(
        self,
        key_hash: str,
        strategy: str,
        k: int,
        tokens: int,
        nusd: int,
        now: float,
        admission_id: str,
    ) -> AdmitResult: ...
    async def settle(self, reservation: Reservation, tokens: int, nusd: int) -> None: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


def judge(
    record: KeyRecord,
    strategy: str,
    k: int,
    tokens: int,
    nusd: int,
    window_use: tuple[int, int],
    budget_use: int,
) -> Verdict:
    """The admission rule both stores apply (Redis runs the same steps in ``_ADMIT``)."""
    limits = record.limits
    if record.revoked:
        return "revoked"
    if limits.max_k is not None and k > limits.max_k:
        return "max_k"
    if limits.strategies is not None and strategy not in limits.strategies:
        return "strategy"
    requests, used_tokens = window_use
    if limits.requests_per_minute is not None and requests + 1 > limits.requests_per_minute:
        return "rpm"
    if limits.tokens_per_minute is not None:
        if tokens > limits.tokens_per_minute:
            return "tpm_request"
        if used_tokens + tokens > limits.tokens_per_minute:
            return "tpm"
    if limits.budget_usd is not None and budget_use + nusd > to_nusd(limits.budget_usd):
        return "budget"
    return "ok"


# -- process memory (one replica) ---------------------------------------------------------------
class KeyFile:
    """Key records as JSON, for a single replica without Redis (``auth.keys_file``); written by
    ``ttc-gateway keys --keys-file``. Holds hashes, never secrets."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> list[KeyRecord]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        return [_record_from_json(item) for item in raw.get("keys", [])]

    def save(self, records: Sequence[KeyRecord]) -> None:
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps({"keys": [asdict(r) for r in records]}, indent=2))
        os.chmod(tmp, 0o600)
        tmp.replace(self.path)  # atomic: a reading gateway never sees half a file

    def mtime(self) -> float | None:
        try:
            return self.path.stat().st_mtime
        except FileNotFoundError:
            return None

    @property
    def usage_path(self) -> Path:
        """Where the gateway keeps what each key spent (``<keys file>.usage.json``): written by
        the gateway alone, so the keys CLI never overwrites spending, and read back at start."""
        return self.path.with_name(self.path.name + ".usage.json")

    def load_spent(self) -> dict[str, int]:
        """Nano-dollars spent, by key hash."""
        try:
            raw = json.loads(self.usage_path.read_text())
        except FileNotFoundError:
            return {}
        return {str(k): int(v) for k, v in raw.get("spent_nusd", {}).items()}

    def save_spent(self, spent: dict[str, int]) -> None:
        """Write the spending (atomically); a folder that cannot be written is logged, never
        an error for the request that settled (its spending stays in memory)."""
        tmp = self.usage_path.with_name(f"{self.usage_path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps({"spent_nusd": spent}))
            os.chmod(tmp, 0o600)
            tmp.replace(self.usage_path)
        except OSError as exc:
            log.error("cannot keep key spending in %s: %s", self.usage_path, exc)


def _record_from_json(item: dict[str, Any]) -> KeyRecord:
    limits = dict(item.get("limits") or {})
    if limits.get("strategies") is not None:
        limits["strategies"] = tuple(limits["strategies"])
    return KeyRecord(**{**item, "limits": KeyLimits(**limits)})


class MemoryKeyStore:
    """Records (optionally from a ``KeyFile``, re-read when it changes) and counters in this
    process. Every method runs without awaiting in between, so each is atomic on the loop."""

    def __init__(self, key_file: KeyFile | None = None, reload_every_s: float = 1.0) -> None:
        self._file = key_file
        self._reload_every_s = reload_every_s
        self._checked = 0.0
        self._mtime: float | None = None
        self._records: dict[str, KeyRecord] = {}
        self._usage: dict[str, list[int]] = {}  # hash -> [spent, reserved]
        self._windows: dict[tuple[str, int], list[int]] = {}  # (hash, minute) -> [req, tokens]
        # (hash, minute) -> ids of that minute's admissions that were settled
        self._settled: dict[tuple[str, int], set[str]] = {}
        self._held: dict[str, Reservation] = {}  # admitted and not yet settled, by id
        self._reload(force=True)
        if key_file is not None:  # spending survives a restart; reservations do not need to
            self._usage = {h: [spent, 0] for h, spent in key_file.load_spent().items()}

    def _reload(self, force: bool = False) -> None:
        if self._file is None:
            return
        now = time.monotonic()
        if not force and now - self._checked < self._reload_every_s:
            return
        self._checked = now
        mtime = self._file.mtime()
        if force or mtime != self._mtime:
            self._mtime = mtime
            self._records = {r.key_hash: r for r in self._file.load()}

    def _save(self) -> None:
        if self._file is not None:
            self._file.save(list(self._records.values()))
            self._mtime = self._file.mtime()

    async def add(self, record: KeyRecord) -> None:
        self._reload(force=True)
        self._records[record.key_hash] = record
        self._save()

    async def records(self) -> list[tuple[KeyRecord, KeyUsage]]:
        self._reload(force=True)
        return [(r, self._usage_of(r.key_hash)) for r in self._records.values()]

    def _usage_of(self, key_hash: str) -> KeyUsage:
        spent, reserved = self._usage.get(key_hash, [0, 0])
        return KeyUsage(spent / NANO, reserved / NANO)

    async def update(self, key_id: str, **changes: Any) -> KeyRecord | None:
        self._reload(force=True)
        for key_hash, record in self._records.items():
            if record.id == key_id:
                updated = _apply(record, changes)
                self._records[key_hash] = updated
                self._save()
                return updated
        return None

    async def has_keys(self) -> bool:
        self._reload()
        return bool(self._records)

    async def admit(
        self,
        key_hash: str,
        strategy: str,
        k: int,
        tokens: int,
        nusd: int,
        now: float,
        admission_id: str,
    ) -> AdmitResult:
        self._reload()
        record = self._records.get(key_hash)
        if record is None:
            return AdmitResult("unknown")
        window = minute_window(now)
        if admission_id in self._held:  # asked again: what it reserved then
            return AdmitResult("ok", record, self._held[admission_id])
        if admission_id in self._settled.get((key_hash, window), ()):
            return AdmitResult("ok", record, Reservation(key_hash, window, 0, 0, admission_id))
        counts = self._windows.setdefault((key_hash, window), [0, 0])
        usage = self._usage.setdefault(key_hash, [0, 0])
        verdict = judge(record, strategy, k, tokens, nusd, (counts[0], counts[1]), sum(usage))
        if verdict != "ok":
            return AdmitResult(verdict, record, used_nusd=sum(usage))
        counts[0] += 1
        counts[1] += tokens
        usage[1] += nusd
        for old in [w for w in self._windows if w[1] < window - 1]:
            del self._windows[old]
        reservation = Reservation(key_hash, window, tokens, nusd, admission_id)
        self._held[admission_id] = reservation
        return AdmitResult("ok", record, reservation)

    async def settle(self, reservation: Reservation, tokens: int, nusd: int) -> None:
        marks = (reservation.key_hash, reservation.window)
        if marks not in self._settled:  # a new minute: forget ids older than SETTLED_TTL_S
            oldest = reservation.window - SETTLED_TTL_S // WINDOW_S
            for old in [m for m in self._settled if m[1] < oldest]:
                del self._settled[old]
            self._settled[marks] = set()
        if reservation.id in self._settled[marks]:
            return  # settled already
        self._settled[marks].add(reservation.id)
        self._held.pop(reservation.id, None)
        usage = self._usage.setdefault(reservation.key_hash, [0, 0])
        usage[0] += nusd
        usage[1] -= reservation.nusd
        if self._file is not None and nusd:
            self._file.save_spent({h: u[0] for h, u in self._usage.items() if u[0]})
        counts = self._windows.get((reservation.key_hash, reservation.window))
        if counts is not None:
            counts[1] += tokens - reservation.tokens

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _apply(record: KeyRecord, changes: dict[str, Any]) -> KeyRecord:
    limit_changes = {k: v for k, v in changes.items() if k in KeyLimits.__dataclass_fields__}
    own = {k: v for k, v in changes.items() if k not in limit_changes}
    return replace(record, limits=replace(record.limits, **limit_changes), **own)


# -- Redis (many replicas) ----------------------------------------------------------------------
# KEYS: the key's record, its usage, this minute's window, its held reservations, the ids of
# this minute's settled admissions.
# ARGV: strategy, k, tokens, nusd, window ttl, admission id, now, when the reservation expires.
# Comparisons use doubles (exact to 2**53); counters are incremented by the ARGV strings.
# Returns {verdict, used nusd, record fields..., nusd released}; the steps are ``judge``'s, in
# the same order. Only a request the budget would refuse looks for expired reservations (their
# request's deadline long past: a replica died before it settled them) and releases them first.
# An id already held or settled is admitted again without counting anything: the same call sent
# twice (redis-py resends a call whose connection broke), or one that reached Redis after its
# request had been let in open and settled.
_ADMIT = """
local f = redis.call('HMGET', KEYS[1], 'id', 'name', 'created', 'revoked', 'rpm', 'tpm',
                     'max_k', 'strategies', 'budget_nusd')
if not f[1] then return {'unknown'} end
local function set(v) return v and v ~= '' end
local released = 0
local function record(verdict, used)  -- a missing field would cut a Lua list short
  local out = {verdict, used or 0}
  for i = 1, 9 do out[i + 2] = f[i] or '' end
  out[12] = released
  return out
end
local function release_expired()
  local held = redis.call('HGETALL', KEYS[4])
  for i = 1, #held, 2 do
    local held_nusd, _, expires = string.match(held[i + 1], '^(%d+) (%d+) ([%d.]+)$')
    if expires and tonumber(expires) < tonumber(ARGV[7]) then
      redis.call('HDEL', KEYS[4], held[i])
      released = released + tonumber(held_nusd)
    end
  end
  if released > 0 then redis.call('HINCRBY', KEYS[2], 'reserved_nusd', -released) end
end
if redis.call('HEXISTS', KEYS[4], ARGV[6]) == 1 or redis.call('HEXISTS', KEYS[5], ARGV[6]) == 1
then
  return record('ok')
end
if f[4] == '1' then return record('revoked') end
local k, tokens, nusd = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if set(f[7]) and k > tonumber(f[7]) then return record('max_k') end
if set(f[8]) and not string.find(',' .. f[8] .. ',', ',' .. ARGV[1] .. ',', 1, true) then
  return record('strategy')
end
local w = redis.call('HMGET', KEYS[3], 'requests', 'tokens')
local requests, used = tonumber(w[1] or '0'), tonumber(w[2] or '0')
if set(f[5]) and requests + 1 > tonumber(f[5]) then return record('rpm') end
if set(f[6]) then
  if tokens > tonumber(f[6]) then return record('tpm_request') end
  if used + tokens > tonumber(f[6]) then return record('tpm') end
end
local function budget_use()
  local u = redis.call('HMGET', KEYS[2], 'spent_nusd', 'reserved_nusd')
  return tonumber(u[1] or '0') + tonumber(u[2] or '0')
end
if set(f[9]) and budget_use() + nusd > tonumber(f[9]) then
  release_expired()
  if budget_use() + nusd > tonumber(f[9]) then return record('budget', budget_use()) end
end
redis.call('HINCRBY', KEYS[3], 'requests', 1)
redis.call('HINCRBY', KEYS[3], 'tokens', ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[5])
redis.call('HINCRBY', KEYS[2], 'reserved_nusd', ARGV[4])
redis.call('HSET', KEYS[4], ARGV[6], ARGV[4] .. ' ' .. ARGV[3] .. ' ' .. ARGV[8])
return record('ok')
"""

# KEYS: usage, the admission's window, held, settled ids of that window.
# ARGV: admission id, spent nusd, used tokens, SETTLED_TTL_S.
# An id is settled once. What it reserved is what Redis held for it: nothing when its admission
# never reached Redis (let in while Redis was down). Integers travel as strings Python wrote
# (Lua's tostring would print a large double as 1e+14); redis.call formats a Lua number with 17
# digits, exact for the integers used here (below 2**53).
_SETTLE = """
if redis.call('HEXISTS', KEYS[4], ARGV[1]) == 1 then return 0 end
local reserved_nusd, reserved_tokens = 0, 0
local held = redis.call('HGET', KEYS[3], ARGV[1])
if held then
  local n, t = string.match(held, '^(%d+) (%d+)')
  reserved_nusd, reserved_tokens = tonumber(n or '0'), tonumber(t or '0')
end
-- all read: the writes follow (a script that fails part-way keeps what it wrote)
if held then redis.call('HDEL', KEYS[3], ARGV[1]) end
if reserved_nusd ~= 0 then  -- -0 would be written "-0", which HINCRBY refuses
  redis.call('HINCRBY', KEYS[1], 'reserved_nusd', -reserved_nusd)
end
if ARGV[2] ~= '0' then redis.call('HINCRBY', KEYS[1], 'spent_nusd', ARGV[2]) end
if redis.call('EXISTS', KEYS[2]) == 1 and tonumber(ARGV[3]) ~= reserved_tokens then
  redis.call('HINCRBY', KEYS[2], 'tokens', tonumber(ARGV[3]) - reserved_tokens)
end
redis.call('HSET', KEYS[4], ARGV[1], 1)
redis.call('EXPIRE', KEYS[4], ARGV[4])
return 1
"""

_LIMIT_FIELDS = {
    "requests_per_minute": "rpm",
    "tokens_per_minute": "tpm",
    "max_k": "max_k",
    "strategies": "strategies",
    "budget_usd": "budget_nusd",
}


def _record_key(key_hash: str) -> str:
    return f"ttc:{{{key_hash}}}:key"


def _usage_key(key_hash: str) -> str:
    return f"ttc:{{{key_hash}}}:usage"


def _window_key(key_hash: str, window: int) -> str:
    return f"ttc:{{{key_hash}}}:rl:{window}"


def _held_key(key_hash: str) -> str:
    return f"ttc:{{{key_hash}}}:held"


def _settled_key(key_hash: str, window: int) -> str:
    return f"ttc:{{{key_hash}}}:settled:{window}"


def _encode_limit(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name == "strategies":
        return ",".join(value)
    if name == "budget_usd":
        return str(to_nusd(value))
    return str(int(value))


def _decode_record(key_hash: str, fields: Sequence[Any]) -> KeyRecord:
    key_id, name, created, revoked, rpm, tpm, max_k, strategies, budget = (str(v) for v in fields)
    return KeyRecord(
        id=key_id,
        name=name,
        key_hash=key_hash,
        created=float(created or 0),
        revoked=revoked == "1",
        limits=KeyLimits(
            requests_per_minute=int(rpm) if rpm else None,
            tokens_per_minute=int(tpm) if tpm else None,
            max_k=int(max_k) if max_k else None,
            strategies=tuple(strategies.split(",")) if strategies else None,
            budget_usd=int(budget) / NANO if budget else None,
        ),
    )


_RECORD_FIELDS = ("id", "name", "created", "revoked", *(_LIMIT_FIELDS.values()))


class RedisKeyStore:
    """Records and counters in Redis, shared by every gateway replica. Every operation is one
    round trip with a timeout; any Redis failure is raised as ``StateUnavailable``.

    ``reservation_ttl_s``: how long after its admission a reservation still belongs to a live
    request (the request deadline and a margin). An older one that was never settled was left
    by a replica that stopped; it is released when it would make the budget refuse a request."""

    def __init__(
        self,
        url: str,
        timeout_s: float = 0.5,
        reservation_ttl_s: float = 600 + RESERVATION_MARGIN_S,
    ) -> None:
        self.url = url
        self.reservation_ttl_s = reservation_ttl_s
        self._redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # One immediate retry on a broken connection (a pooled one after a Redis restart);
            # redis-py's default backs off for seconds, which would hold requests meanwhile.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            health_check_interval=0,
        )
        self._admit = self._redis.register_script(_ADMIT)
        self._settle = self._redis.register_script(_SETTLE)

    async def _call(self, operation: Any) -> Any:
        try:
            return await operation
        except (RedisError, OSError, TimeoutError) as exc:
            lost = isinstance(exc, (RedisTimeoutError, TimeoutError))
            raise StateUnavailable(f"{type(exc).__name__}: {exc}", answer_lost=lost) from None

    async def add(self, record: KeyRecord) -> None:
        fields = {
            "id": record.id,
            "name": record.name,
            "created": repr(record.created),
            "revoked": "1" if record.revoked else "0",
            **{
                short: _encode_limit(name, getattr(record.limits, name))
                for name, short in _LIMIT_FIELDS.items()
            },
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(_record_key(record.key_hash), mapping=fields)  # type: ignore[arg-type]
            pipe.set(f"ttc:id:{record.id}", record.key_hash)
            pipe.sadd("ttc:keys", record.id)
            await self._call(pipe.execute())

    async def _hash_of(self, key_id: str) -> str | None:
        value = await self._call(self._redis.get(f"ttc:id:{key_id}"))
        return str(value) if value is not None else None

    async def records(self) -> list[tuple[KeyRecord, KeyUsage]]:
        ids = sorted(await self._call(self._redis.smembers("ttc:keys")))
        out = []
        for key_id in ids:
            key_hash = await self._hash_of(key_id)
            if key_hash is None:
                continue
            fields = await self._call(self._redis.hmget(_record_key(key_hash), _RECORD_FIELDS))
            spent, reserved = await self._call(
                self._redis.hmget(_usage_key(key_hash), ["spent_nusd", "reserved_nusd"])
            )
            out.append(
                (
                    _decode_record(key_hash, [f or "" for f in fields]),
                    KeyUsage(int(spent or 0) / NANO, int(reserved or 0) / NANO),
                )
            )
        return out

    async def update(self, key_id: str, **changes: Any) -> KeyRecord | None:
        key_hash = await self._hash_of(key_id)
        if key_hash is None:
            return None
        fields: dict[str, str] = {}
        for name, value in changes.items():
            if name == "revoked":
                fields["revoked"] = "1" if value else "0"
            elif name in _LIMIT_FIELDS:
                fields[_LIMIT_FIELDS[name]] = _encode_limit(name, value)
            else:
                raise ValueError(f"unknown key field {name!r}")
        if fields:
            await self._call(self._redis.hset(_record_key(key_hash), mapping=fields))  # type: ignore[arg-type]
        values = await self._call(self._redis.hmget(_record_key(key_hash), _RECORD_FIELDS))
        return _decode_record(key_hash, [v or "" for v in values])

    async def has_keys(self) -> bool:
        return bool(await self._call(self._redis.scard("ttc:keys")))

    async def admit(
        self,
        key_hash: str,
        strategy: str,
        k: int,
        tokens: int,
        nusd: int,
        now: float,
        admission_id: str,
    ) -> AdmitResult:
        window = minute_window(now)
        reply = await self._call(
            self._admit(
                keys=[
                    _record_key(key_hash),
                    _usage_key(key_hash),
                    _window_key(key_hash, window),
                    _held_key(key_hash),
                    _settled_key(key_hash, window),
                ],
                args=[
                    strategy,
                    k,
                    tokens,
                    nusd,
                    WINDOW_TTL_S,
                    admission_id,
                    f"{now:.3f}",
                    f"{now + self.reservation_ttl_s:.3f}",
                ],
            )
        )
        verdict = str(reply[0])
        if verdict != "unknown" and int(reply[11]):
            log.warning(
                "released $%.6f reserved for key %s by requests never settled (past their "
                "deadline: a gateway replica stopped while serving them)",
                int(reply[11]) / NANO,
                str(reply[2]),
            )
        if verdict == "unknown":
            return AdmitResult("unknown")
        record = _decode_record(key_hash, reply[2:11])
        if verdict != "ok":
            return AdmitResult(verdict, record, used_nusd=int(reply[1]))  # type: ignore[arg-type]
        reservation = Reservation(key_hash, window, tokens, nusd, admission_id)
        return AdmitResult("ok", record, reservation)

    async def settle(self, reservation: Reservation, tokens: int, nusd: int) -> None:
        key_hash, window = reservation.key_hash, reservation.window
        await self._call(
            self._settle(
                keys=[
                    _usage_key(key_hash),
                    _window_key(key_hash, window),
                    _held_key(key_hash),
                    _settled_key(key_hash, window),
                ],
                args=[reservation.id, nusd, tokens, SETTLED_TTL_S],
            )
        )

    async def ping(self) -> None:
        await self._call(self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()

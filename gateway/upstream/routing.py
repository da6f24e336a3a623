"""Routing policies: which worker of a pool a request goes to, so its prompt's prefix is cached.

Within one request the gateway already shares the prompt's KV cache (k samples as one request
with ``n=k``, step-wise strategies kept on their worker). A policy does the same across
requests. Each pool has one (``pools[].routing.policy``):

``least_loaded``
    The worker with the fewest samples in flight (ties rotate). Blind to prefixes.
``round_robin``
    The next worker in turn that has room.
``session``
    Sticky on the client's ``X-TTC-Session`` header, else the OpenAI ``user`` field: rendezvous
    hashing of the key over the workers' configured names, else their addresses (the same in
    every replica), so every gateway replica sends a session to the same worker, and only that
    worker's sessions move when it goes. A full or failing worker
    spills the session to its next worker in the same order.
``cache_aware`` (default with more than one worker)
    SGLang's router policy (see ``GATEWAYS.md`` §4) over an approximate prefix index: the
    prompt's text cut into blocks of ``block_chars`` characters, each block's hash chained to
    the previous one's, so a block names its whole prefix. The index maps each block to the
    workers it was sent to, bounded by ``max_index_blocks`` with least-recently-used eviction.
    The worker holding the longest match takes the request when the match covers more than
    ``cache_threshold`` of the prompt (a *hit*), else the least-loaded worker does (a *miss*).
    A hit on a worker that is loaded more than ``balance_abs_threshold`` above *and*
    ``balance_rel_threshold`` times the least-loaded one goes to the least-loaded one instead (a
    *spill*): a hot prefix is copied to another worker rather than queued behind itself.

The index is each gateway replica's own, learned from the requests it sent; ``session`` is the
exact choice across replicas. Load is the gateway's own count of samples in flight on a worker
(a request with ``n=k`` counts k), what the engine will be decoding.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from gateway.config import RoutingConfig

if TYPE_CHECKING:
    from gateway.upstream.pool import Worker

Outcome = Literal["hit", "miss", "spill", "balanced"]


class RouteRequest:
    """What a policy may look at in one upstream call: its prompt text (computed only when a
    policy asks) and the client's session key."""

    __slots__ = ("_blocks", "_text", "body", "session")

    def __init__(self, body: dict[str, Any], session: str | None = None) -> None:
        self.body = body
        self.session = session
        self._text: str | None = None
        self._blocks: tuple[int, list[int]] | None = None

    @property
    def text(self) -> str:
        """The prompt as the engine will see it, in order: each message's role and text (the
        chat template wraps them alike on every turn, so prefixes match), or the prompt."""
        if self._text is None:
            self._text = prompt_text(self.body)
        return self._text

    def blocks(self, size: int) -> list[int]:
        """Chained hashes of the text's whole ``size``-character blocks: block i's hash covers
        characters 0 to (i+1)*size, so equal hashes mean equal prefixes."""
        if self._blocks is None or self._blocks[0] != size:
            text, chained, previous = self.text, [], 0
            for start in range(0, len(text) - size + 1, size):
                previous = hash((previous, text[start : start + size]))
                chained.append(previous)
            self._blocks = (size, chained)
        return self._blocks[1]


def prompt_text(body: dict[str, Any]) -> str:
    """The text a request's prompt is made of (chat messages or a completion prompt)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = []
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, list):  # content parts: their text, in order
                content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            parts.append(f"<{message.get('role')}>{content or ''}\n")
        return "".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        return "".join(map(str, prompt))
    return str(prompt) if prompt is not None else ""


class RoutingPolicy(Protocol):
    """Picks a worker for each upstream call and learns where prompts went."""

    name: str

    def choose(self, workers: Sequence[Worker], request: RouteRequest) -> tuple[Worker, Outcome]:
        """One of ``workers`` (healthy, circuit closed, with room; never empty) for
        ``request``, and what kind of decision it was. The request is sent there."""

    def sent(self, worker: Worker, request: RouteRequest) -> None:
        """``request`` went to ``worker`` without a choice (a step kept on its worker)."""

    def forget(self, worker: Worker) -> None:
        """``worker`` is down or gone: its cache is lost, or it will be."""

    def index_blocks(self) -> int:
        """Entries in the policy's prefix index (0 without one)."""


def least_loaded(workers: Sequence[Worker], start: int) -> Worker:
    """The worker with the fewest samples in flight; equals are taken in turn from ``start``."""
    best = workers[start % len(workers)]
    for offset in range(1, len(workers)):
        worker = workers[(start + offset) % len(workers)]
        if worker.sequences < best.sequences:
            best = worker
    return best


class _Blind:
    """Shared by the policies that keep no index."""

    def sent(self, worker: Worker, request: RouteRequest) -> None:
        pass

    def forget(self, worker: Worker) -> None:
        pass

    def index_blocks(self) -> int:
        return 0


class LeastLoaded(_Blind):
    name = "least_loaded"

    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, workers: Sequence[Worker], request: RouteRequest) -> tuple[Worker, Outcome]:
        return least_loaded(workers, next(self._turn)), "balanced"


class RoundRobin(_Blind):
    name = "round_robin"

    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, workers: Sequence[Worker], request: RouteRequest) -> tuple[Worker, Outcome]:
        return workers[next(self._turn) % len(workers)], "balanced"


def stable_identity(worker: Worker) -> str:
    """What every replica calls a worker alike: its configured name, else its address (a
    discovered worker's generated name depends on what that process saw before). Only hashed,
    never shown."""
    return worker.config.name or worker.url


def rendezvous_score(session: str, worker_name: str) -> int:
    """Highest-random-weight hashing: stable across processes and replicas (not ``hash``)."""
    digest = hashlib.blake2b(f"{session}\0{worker_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Session(_Blind):
    """Sticky sessions by rendezvous hashing; requests without a key are balanced."""

    name = "session"

    def __init__(self, all_workers: Sequence[Worker]) -> None:
        self._all = all_workers  # the pool's list, kept current by it
        self._turn = itertools.count()

    def choose(self, workers: Sequence[Worker], request: RouteRequest) -> tuple[Worker, Outcome]:
        if request.session is None:
            return least_loaded(workers, next(self._turn)), "miss"
        ranked = sorted(
            (w for w in self._all if not w.retired),
            key=lambda w: rendezvous_score(request.session or "", stable_identity(w)),
            reverse=True,
        )
        able = set(map(id, workers))
        for place, worker in enumerate(ranked):
            if id(worker) in able:
                return worker, "hit" if place == 0 else "spill"
        return least_loaded(workers, next(self._turn)), "spill"


class PrefixIndex:
    """Which workers were sent which prompt prefixes: chained block hash -> bit mask of
    workers, least recently used first, at most ``max_blocks`` entries."""

    def __init__(self, max_blocks: int) -> None:
        self.max_blocks = max_blocks
        self._blocks: OrderedDict[int, int] = OrderedDict()
        self._bits: dict[int, int] = {}  # id(worker) -> its bit
        self._next_bit = itertools.count()

    def __len__(self) -> int:
        return len(self._blocks)

    def _bit(self, worker: Worker) -> int:
        bit = self._bits.get(id(worker))
        if bit is None:
            bit = self._bits[id(worker)] = 1 << next(self._next_bit)
        return bit

    def matched(self, blocks: Sequence[int], workers: Sequence[Worker]) -> list[int]:
        """How many leading blocks each of ``workers`` holds (one pass: ``alive`` keeps the
        bits of the workers that held every block so far)."""
        bits = [self._bits.get(id(worker), 0) for worker in workers]
        alive = 0
        for bit in bits:
            alive |= bit
        depth_of: dict[int, int] = {}
        depth = 0
        for block in blocks:
            if not alive:
                break
            held = alive & self._blocks.get(block, 0)
            if held != alive:
                for bit in bits:
                    if alive & bit and not held & bit:
                        depth_of[bit] = depth
                alive = held
            depth += 1
        return [depth_of.get(bit, depth) if bit else 0 for bit in bits]

    def insert(self, blocks: Sequence[int], worker: Worker) -> None:
        """``worker`` holds these blocks now. The first block is marked most recently used, so
        eviction takes a prompt's tail before the prefix other prompts share."""
        bit = self._bit(worker)
        entries = self._blocks
        for block in reversed(blocks):
            entries[block] = entries.get(block, 0) | bit
            entries.move_to_end(block)
        while len(entries) > self.max_blocks:
            entries.popitem(last=False)

    def forget(self, worker: Worker) -> None:
        """Drop ``worker``: its bit is retired (entries still carrying it are ignored, then
        evicted in turn); if it comes back it starts with an empty cache and a new bit."""
        self._bits.pop(id(worker), None)


class CacheAware:
    """SGLang's cache-aware policy over ``PrefixIndex`` (module docstring)."""

    name = "cache_aware"

    def __init__(self, config: RoutingConfig) -> None:
        self.config = config
        self.index = PrefixIndex(config.max_index_blocks)
        self._turn = itertools.count()

    def choose(self, workers: Sequence[Worker], request: RouteRequest) -> tuple[Worker, Outcome]:
        config = self.config
        blocks = request.blocks(config.block_chars)
        depths = self.index.matched(blocks, workers)
        deepest = max(depths, default=0)
        share = deepest * config.block_chars / len(request.text) if request.text else 0.0
        idlest = least_loaded(workers, next(self._turn))
        outcome: Outcome
        if deepest == 0 or share <= config.cache_threshold:
            chosen, outcome = idlest, "miss"
        else:
            holders = [w for w, d in zip(workers, depths, strict=True) if d == deepest]
            chosen, outcome = min(holders, key=lambda w: w.sequences), "hit"
            load, least = chosen.sequences, idlest.sequences
            if (
                load > least + config.balance_abs_threshold
                and load > least * config.balance_rel_threshold
            ):
                chosen, outcome = idlest, "spill"  # the prefix is copied there
        self.index.insert(blocks, chosen)
        return chosen, outcome

    def sent(self, worker: Worker, request: RouteRequest) -> None:
        self.index.insert(request.blocks(self.config.block_chars), worker)

    def forget(self, worker: Worker) -> None:
        self.index.forget(worker)

    def index_blocks(self) -> int:
        return len(self.index)


def make_policy(config: RoutingConfig, workers: Sequence[Worker], several: bool) -> RoutingPolicy:
    """The pool's policy; ``workers`` is the pool's own (live) list of workers; ``several``:
    it has, or may find, more than one (the default is then ``cache_aware``)."""
    policy = config.policy or ("cache_aware" if several else "least_loaded")
    if policy == "cache_aware":
        return CacheAware(config)
    if policy == "session":
        return Session(workers)
    if policy == "round_robin":
        return RoundRobin()
    return LeastLoaded()

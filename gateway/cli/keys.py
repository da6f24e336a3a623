"""``ttc-gateway keys``: create, list, revoke API keys and set their budgets.

The keys live where the gateway reads them: Redis (``--redis-url``, ``REDIS_URL`` or the
configuration's ``state.redis_url``), else the JSON file of a single replica
(``--keys-file`` or ``auth.keys_file``). A key's secret is printed once, by ``create``; the store
keeps only its SHA-256.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from gateway.access.control import open_store
from gateway.access.stores import (
    KeyLimits,
    KeyRecord,
    KeyStore,
    KeyUsage,
    StateUnavailable,
    hash_secret,
    new_secret,
)
from gateway.config import ConfigError, load_settings

keys_app = typer.Typer(
    help="Manage API keys (Redis, or a keys file for one replica).", no_args_is_help=True
)

T = TypeVar("T")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="TTC_CONFIG", help="The gateway's YAML configuration"),
]
RedisOption = Annotated[
    str | None, typer.Option("--redis-url", help="Redis URL (default: REDIS_URL or the config)")
]
FileOption = Annotated[
    Path | None, typer.Option("--keys-file", help="Keys file of a gateway without Redis")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text")]


def _run(
    config: Path | None,
    redis_url: str | None,
    keys_file: Path | None,
    action: Callable[[KeyStore], Awaitable[T]],
) -> T:
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(f"ttc-gateway: {exc}", err=True)
        raise typer.Exit(2) from None
    auth, state = settings.auth, settings.state
    if redis_url:
        state = state.model_copy(update={"redis_url": redis_url})
    if keys_file:  # an explicit file wins over REDIS_URL and the configuration's Redis
        auth = auth.model_copy(update={"keys_file": str(keys_file)})
        state = state.model_copy(update={"redis_url": redis_url})
    if not state.redis_url and not auth.keys_file:
        typer.echo(
            "ttc-gateway: no key store: set REDIS_URL (or --redis-url, state.redis_url), or "
            "--keys-file (auth.keys_file) for a gateway without Redis",
            err=True,
        )
        raise typer.Exit(2)

    async def main() -> T:
        store = open_store(auth, state)
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except StateUnavailable as exc:
        typer.echo(f"ttc-gateway: the key store is unavailable: {exc}", err=True)
        raise typer.Exit(1) from None


def _describe(record: KeyRecord, usage: KeyUsage | None = None) -> dict[str, Any]:
    limits = record.limits
    out: dict[str, Any] = {
        "id": record.id,
        "name": record.name,
        "created": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
        "revoked": record.revoked,
        "requests_per_minute": limits.requests_per_minute,
        "tokens_per_minute": limits.tokens_per_minute,
        "max_k": limits.max_k,
        "strategies": list(limits.strategies) if limits.strategies is not None else None,
        "budget_usd": limits.budget_usd,
    }
    if usage is not None:
        out["spent_usd"] = usage.spent_usd
        out["reserved_usd"] = usage.reserved_usd
    return out


def _print(described: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(described))
        return
    typer.echo("  ".join(f"{k}={v}" for k, v in described.items() if v is not None))


@keys_app.command()
def create(
    name: Annotated[str, typer.Option(help="Who or what the key is for (shown in `list`)")],
    rpm: Annotated[int | None, typer.Option(min=1, help="Requests per minute")] = None,
    tpm: Annotated[int | None, typer.Option(min=1, help="Tokens per minute")] = None,
    max_k: Annotated[int | None, typer.Option(min=1, help="Most samples per request")] = None,
    strategies: Annotated[
        str | None, typer.Option(help="Comma-separated strategies allowed (default: all)")
    ] = None,
    budget_usd: Annotated[
        float | None, typer.Option(min=0, help="USD the key may spend in all")
    ] = None,
    config: ConfigOption = None,
    redis_url: RedisOption = None,
    keys_file: FileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a key and print its secret (shown only this once)."""
    from strategies import REGISTRY

    allowed = tuple(s.strip() for s in strategies.split(",") if s.strip()) if strategies else None
    unknown = [s for s in allowed or () if s not in REGISTRY]
    if unknown:
        typer.echo(f"ttc-gateway: unknown strategies {', '.join(unknown)}", err=True)
        raise typer.Exit(2)
    secret = new_secret()
    record = KeyRecord(
        id=secrets.token_hex(6),
        name=name,
        key_hash=hash_secret(secret),
        created=time.time(),
        limits=KeyLimits(rpm, tpm, max_k, allowed, budget_usd),
    )
    _run(config, redis_url, keys_file, lambda store: store.add(record))
    described = {"key": secret, **_describe(record)}
    if as_json:
        typer.echo(json.dumps(described))
    else:
        typer.echo(secret)
        typer.echo("(the secret is not stored anywhere: keep it now)", err=True)
        _print(_describe(record), as_json=False)


@keys_app.command("list")
def list_keys(
    config: ConfigOption = None,
    redis_url: RedisOption = None,
    keys_file: FileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every key with its limits and what it has spent (never the secrets)."""
    for record, usage in _run(config, redis_url, keys_file, lambda store: store.records()):
        _print(_describe(record, usage), as_json)


def _change(
    key_id: str,
    config: Path | None,
    redis_url: str | None,
    keys_file: Path | None,
    as_json: bool,
    **changes: Any,
) -> None:
    record = _run(config, redis_url, keys_file, lambda store: store.update(key_id, **changes))
    if record is None:
        typer.echo(f"ttc-gateway: no key with id {key_id!r}", err=True)
        raise typer.Exit(1)
    _print(_describe(record), as_json)


@keys_app.command()
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (from `create` or `list`)")],
    config: ConfigOption = None,
    redis_url: RedisOption = None,
    keys_file: FileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Refuse the key from now on (within a second on every replica)."""
    _change(key_id, config, redis_url, keys_file, as_json, revoked=True)


@keys_app.command("set-budget")
def set_budget(
    key_id: Annotated[str, typer.Argument(help="The key's id")],
    budget_usd: Annotated[str, typer.Argument(help="USD in all, or `none` for no budget")],
    config: ConfigOption = None,
    redis_url: RedisOption = None,
    keys_file: FileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Set the key's total USD budget (what it has spent so far still counts)."""
    if budget_usd.lower() == "none":
        value: float | None = None
    else:
        try:
            value = float(budget_usd)
        except ValueError:
            value = -1.0
        if not value >= 0:
            typer.echo(f"ttc-gateway: budget must be >= 0 or none, got {budget_usd}", err=True)
            raise typer.Exit(2)
    _change(key_id, config, redis_url, keys_file, as_json, budget_usd=value)

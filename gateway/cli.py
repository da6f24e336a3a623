"""The ``ttc-gateway`` command: ``serve``, ``check-config``, ``keys`` (API keys), ``bench``."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn

from gateway.config import ConfigError, GatewaySettings, load_settings

cli = typer.Typer(
    name="ttc-gateway",
    help="OpenAI-compatible gateway for test-time-compute strategies.",
    no_args_is_help=True,
    add_completion=False,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="TTC_CONFIG",
        help="YAML configuration (default: the embedded default, no file needed).",
    ),
]


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _load(config: Path | None) -> GatewaySettings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        typer.echo(f"ttc-gateway: {exc}", err=True)
        raise typer.Exit(2) from None


@cli.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Override server.host")] = None,
    port: Annotated[int | None, typer.Option(help="Override server.port")] = None,
    workers: Annotated[int | None, typer.Option(help="uvicorn worker processes")] = None,
) -> None:
    """Start the gateway (and its embedded llama.cpp worker when configured)."""
    from gateway.app import SETTINGS_ENV, create_app
    from gateway.embedded import EmbeddedEngines

    settings = _load(config)
    server = settings.server.model_copy(
        update={
            k: v
            for k, v in {"host": host, "port": port, "workers": workers}.items()
            if v is not None
        }
    )
    settings = settings.model_copy(update={"server": server})
    _configure_logging(server.log_level)
    log = logging.getLogger("ttc.serve")
    try:
        engines = EmbeddedEngines(settings)
        with engines as resolved:
            log.info(
                "ttc-gateway listening on http://%s:%d (OpenAI base_url: http://%s:%d/v1)",
                server.host,
                server.port,
                server.host,
                server.port,
            )
            uvicorn_options: dict[str, Any] = dict(
                host=server.host,
                port=server.port,
                log_level=server.log_level,
                access_log=False,
                timeout_graceful_shutdown=server.shutdown_grace_s,
                loop="uvloop",
                http="httptools",
            )
            if server.workers == 1:
                uvicorn.run(create_app(resolved), **uvicorn_options)
            else:
                os.environ[SETTINGS_ENV] = resolved.model_dump_json()
                uvicorn.run(
                    "gateway.app:app_from_environment",
                    factory=True,
                    workers=server.workers,
                    **uvicorn_options,
                )
    except (RuntimeError, FileNotFoundError) as exc:
        log.error("%s", exc)
        raise typer.Exit(1) from None
    log.info("ttc-gateway stopped")


@cli.command("check-config")
def check_config(config: ConfigOption = None) -> None:
    """Validate a configuration and print it resolved (defaults and environment applied)."""
    settings = _load(config)
    typer.echo(settings.model_dump_json(indent=2))


def main() -> None:
    from gateway.bench import bench_app
    from gateway.keys_cli import keys_app

    cli.add_typer(bench_app, name="bench")
    cli.add_typer(keys_app, name="keys")
    cli()

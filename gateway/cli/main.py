"""The ``ttc-gateway`` command: ``serve``, ``check-config``, ``keys`` (API keys), ``bench``."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from uvicorn.supervisors import Multiprocess

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
    from gateway.engines.embedded import EmbeddedEngines
    from gateway.http.app import SETTINGS_ENV, configure_logging, create_app
    from gateway.metrics import MULTIPROC_ENV

    settings = _load(config)
    server = settings.server.model_copy(
        update={
            k: v
            for k, v in {"host": host, "port": port, "workers": workers}.items()
            if v is not None
        }
    )
    settings = settings.model_copy(update={"server": server})
    configure_logging(server.log_level, server.workers)
    log = logging.getLogger("ttc.serve")
    try:
        engines = EmbeddedEngines(settings)
        with engines as resolved:
            uvicorn_config = uvicorn.Config(
                "gateway.http.app:app_from_environment"
                if server.workers > 1
                else create_app(resolved),
                factory=server.workers > 1,
                host=server.host,
                port=server.port,
                workers=server.workers,
                log_level=server.log_level,
                access_log=False,
                timeout_graceful_shutdown=server.shutdown_grace_s,
                loop="uvloop",
                http="httptools",
            )
            if server.workers == 1:
                with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, re-raised by uvicorn
                    _Server(uvicorn_config).run()
            else:
                # Every process gets the resolved settings, and writes its metrics where
                # /metrics (answered by any of them) sums them.
                os.environ[SETTINGS_ENV] = resolved.model_dump_json()
                with tempfile.TemporaryDirectory(prefix="ttc-metrics-") as metrics_dir:
                    os.environ[MULTIPROC_ENV] = metrics_dir
                    bound = uvicorn_config.bind_socket()  # before we say we listen
                    _log_listening(server.host, bound.getsockname()[1], server.workers)
                    with contextlib.suppress(KeyboardInterrupt):
                        _supervisor(uvicorn_config, bound).run()
    except (RuntimeError, FileNotFoundError, OSError) as exc:
        log.error("%s", exc)
        raise typer.Exit(1) from None
    log.info("ttc-gateway stopped")


def _supervisor(config: uvicorn.Config, bound: socket.socket) -> Multiprocess:
    """uvicorn's process supervisor, built as ``uvicorn.run`` builds it (older uvicorn
    releases take the server's ``run`` as ``target``)."""
    if "target" in inspect.signature(Multiprocess).parameters:
        return Multiprocess(config, target=uvicorn.Server(config).run, sockets=[bound])  # type: ignore[call-arg]
    return Multiprocess(config, sockets=[bound])


def _log_listening(host: str, port: int, processes: int = 1) -> None:
    logging.getLogger("ttc.serve").info(
        "ttc-gateway listening on http://%s:%d (OpenAI base_url: http://%s:%d/v1)%s",
        host,
        port,
        host,
        port,
        f", {processes} processes" if processes > 1 else "",
    )


class _Server(uvicorn.Server):
    """uvicorn's server, which says where the gateway listens once the port is bound (not
    before: a port in use is an error, not a false "listening")."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            _log_listening(self.config.host, self.servers[0].sockets[0].getsockname()[1])


def _version(value: bool) -> None:
    if value:
        from gateway import __version__

        typer.echo(f"ttc-gateway {__version__}")
        raise typer.Exit()


@cli.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """OpenAI-compatible gateway for test-time-compute strategies."""


@cli.command("check-config")
def check_config(config: ConfigOption = None) -> None:
    """Validate a configuration and print it resolved (defaults and environment applied)."""
    settings = _load(config)
    typer.echo(settings.model_dump_json(indent=2))


def main() -> None:
    from gateway.bench import bench_app
    from gateway.cli.keys import keys_app

    cli.add_typer(bench_app, name="bench")
    cli.add_typer(keys_app, name="keys")
    cli()

"""Benchmarks run from the command line: ``ttc-gateway bench ...``."""

from __future__ import annotations

import typer

bench_app = typer.Typer(help="Benchmarks that print measured ratios.", no_args_is_help=True)


def _register() -> None:
    from gateway.bench.overhead import overhead

    bench_app.command("overhead")(overhead)


_register()

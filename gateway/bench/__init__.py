"""Benchmarks run from the command line: ``ttc-gateway bench ...``."""

from __future__ import annotations

import typer

bench_app = typer.Typer(help="Benchmarks that print measured ratios.", no_args_is_help=True)


def _register() -> None:
    from gateway.bench.fanout import fanout
    from gateway.bench.overhead import overhead
    from gateway.bench.routing import routing
    from gateway.bench.soak import soak
    from gateway.bench.stopping import stopping
    from gateway.bench.strategies import strategies

    bench_app.command("overhead")(overhead)
    bench_app.command("strategies")(strategies)
    bench_app.command("soak")(soak)
    bench_app.command("fanout")(fanout)
    bench_app.command("routing")(routing)
    bench_app.command("stopping")(stopping)


_register()

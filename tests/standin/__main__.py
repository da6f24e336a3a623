"""``python -m tests.standin --flavor vllm --port 9001``: a stand-in engine in its own process.

Script it at runtime with ``POST /standin/script`` and read its counters at
``GET /standin/state``.
"""

from __future__ import annotations

import argparse

import uvicorn

from tests.standin.engine import StandinEngine
from tests.standin.wire import FLAVORS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flavor", choices=sorted(FLAVORS), default="vllm")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--served-model", default=None, help="reject other model names (404)")
    parser.add_argument("--max-running", type=int, default=None, help="queue beyond this")
    args = parser.parse_args(argv)
    engine = StandinEngine(
        args.flavor, served_model=args.served_model, max_running=args.max_running
    )
    uvicorn.run(engine, host=args.host, port=args.port, log_level="warning", lifespan="off")


if __name__ == "__main__":
    main()

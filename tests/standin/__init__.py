"""Engine stand-ins: fast, scriptable fakes of vLLM, SGLang, llama.cpp and a generic OpenAI
server that speak each engine's wire dialect, for contract tests and load tests.

In-process::

    async with serve_standin("sglang", Script.text("a b c", token_delay_s=0.01)) as s:
        ...  # s.url, s.engine.running, s.engine.abort_requests

Another process: ``python -m tests.standin --flavor vllm --port 9001``.
"""

from tests.standin.engine import ReceivedRequest, StandinDied, StandinEngine
from tests.standin.script import SampleScript, Script, split_tokens
from tests.standin.server import RunningStandin, bind_free_port, serve_asgi, serve_standin
from tests.standin.wire import FLAVORS, Flavor

__all__ = [
    "FLAVORS",
    "Flavor",
    "ReceivedRequest",
    "RunningStandin",
    "SampleScript",
    "Script",
    "StandinDied",
    "StandinEngine",
    "bind_free_port",
    "serve_asgi",
    "serve_standin",
    "split_tokens",
]

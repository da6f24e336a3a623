"""Any OpenAI-compatible server: the defaults of ``EngineAdapter``, no quirks."""

from __future__ import annotations

from gateway.config import EngineKind
from gateway.engines.base import EngineAdapter


class OpenAIAdapter(EngineAdapter):
    kind = EngineKind.OPENAI

"""The adapter of each engine kind (one module per kind holds all of its quirks)."""

from __future__ import annotations

from gateway.config import EngineKind
from gateway.engines.base import EngineAdapter
from gateway.engines.generic import OpenAIAdapter
from gateway.engines.llamacpp import LlamaCppAdapter
from gateway.engines.sglang import SglangAdapter
from gateway.engines.vllm import VllmAdapter

ADAPTERS: dict[EngineKind, type[EngineAdapter]] = {
    EngineKind.OPENAI: OpenAIAdapter,
    EngineKind.VLLM: VllmAdapter,
    EngineKind.SGLANG: SglangAdapter,
    EngineKind.LLAMACPP: LlamaCppAdapter,
}


def adapter_for(kind: EngineKind) -> EngineAdapter:
    return ADAPTERS[kind]()

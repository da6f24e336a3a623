"""The OpenAI wire format in one place: the request models and the SSE codec.

Imports nothing of the gateway but ``gateway.errors`` and ``gateway.config``.
"""

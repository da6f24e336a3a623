"""ttc-gateway: an OpenAI-compatible gateway for test-time-compute strategies."""

__version__ = "0.1.0"

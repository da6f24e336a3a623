"""The workers: pools and placement, the client that opens, relays and aborts calls,
the token tally of upstream streams, circuit breakers.

Never imports ``gateway.http`` or ``gateway.pipeline`` (``lint-imports``).
"""

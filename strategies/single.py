"""``single``: pass the request through to one worker, unchanged. The default strategy.

The gateway forwards the body (``n`` included) to the least-loaded healthy worker serving the
model, relays its answer, and counts its tokens.
"""

from __future__ import annotations

from strategies.base import StrategySpec

SINGLE = StrategySpec(
    name="single",
    summary="Pass-through: one worker answers the request as it is.",
    source="-",
)

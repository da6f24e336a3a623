"""Grades a model writes as one digit, 0 to 9, read from the first token it generates.

SpecReason's verifier grades a draft step this way (Pan et al. 2025, arXiv 2504.07891), and
best-of-N's judge a candidate answer. The grade is either the digit sampled (``sampled_digit``)
or its expectation under the top alternatives, renormalised over the digit tokens among them
(``expected_digit``: SpecReason's "average", steadier than one sample). Tokens are compared
after ``strip()``: tokenisers differ on leading spaces.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

DIGITS = "0123456789"


def _digit(token: str) -> int | None:
    token = token.strip()
    return int(token) if len(token) == 1 and token in DIGITS else None


def sampled_digit(token: str) -> float | None:
    """The sampled token as a grade, or None when it is not one digit."""
    digit = _digit(token)
    return None if digit is None else float(digit)


def expected_digit(top_logprobs: Mapping[str, float]) -> float | None:
    """The expected digit under the top alternatives' probabilities, renormalised over the
    digit tokens; None when no digit is among them."""
    weights: dict[int, float] = {}
    for token, logprob in top_logprobs.items():
        digit = _digit(token)
        if digit is not None:
            weights[digit] = weights.get(digit, 0.0) + math.exp(logprob)
    total = math.fsum(weights.values())
    if total <= 0:
        return None
    return math.fsum(digit * p for digit, p in weights.items()) / total

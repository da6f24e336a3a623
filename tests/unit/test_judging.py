"""The one-digit grades of SpecReason's verifier and best-of-N's judge (strategies.judging)."""

from __future__ import annotations

import math

import pytest

from strategies.judging import expected_digit, sampled_digit


def test_a_sampled_grade_is_one_ascii_digit() -> None:
    assert sampled_digit(" 7") == 7.0
    assert sampled_digit("0") == 0.0
    for token in ("", " ", "x", "7.", "10", "²", "٣"):
        assert sampled_digit(token) is None, token


def test_the_expected_grade_renormalises_over_the_digit_tokens_only() -> None:
    top = {"9": math.log(0.3), " 9": math.log(0.1), "5": math.log(0.4), "the": math.log(0.2)}
    assert expected_digit(top) == pytest.approx((9 * 0.4 + 5 * 0.4) / 0.8)
    assert expected_digit({"the": -0.1, "10": -0.5}) is None
    assert expected_digit({}) is None

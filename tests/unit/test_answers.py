"""Answer extraction, normalisation, voting and equivalence (strategies/answers.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from strategies import answers
from strategies.answers import (
    AnswerBuckets,
    VoteTally,
    answer_key,
    answer_region,
    answers_equivalent,
    extract_answer,
    gsm8k_gold,
    normalize_answer,
    numerically_same,
)

GSM8K_TEST = Path(__file__).resolve().parents[2] / "gateway" / "bench" / "data" / "gsm8k_test.jsonl"


# --- answer region ----------------------------------------------------------------------------


def test_region_is_text_after_last_think_close() -> None:
    text = "<think>maybe \\boxed{3}</think>first</think> final \\boxed{4}"
    assert answer_region(text) == " final \\boxed{4}"


def test_region_without_think_is_whole_text() -> None:
    assert answer_region("plain \\boxed{4}") == "plain \\boxed{4}"


def test_key_ignores_answer_boxed_inside_thinking() -> None:
    assert answer_key("<think>so \\boxed{3}? no.</think>The result is \\boxed{5}.") == "5"


def test_key_of_unfinished_thinking_uses_the_thinking() -> None:
    assert answer_key("<think>I get \\boxed{3} so far") == "3"


# --- extraction: rules in order -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{\\left\\{1, \\{2\\}\\right\\}}", "\\left\\{1, \\{2\\}\\right\\}"),
        ("first \\boxed{1}, then \\boxed{2}", "2"),
        ("$\\boxed 5$ apples", "5"),
        ("\\boxed 7", "7"),
        ("\\boxed{C}", "C"),
        # a boxed answer beats "the answer is" and later numbers
        ("The answer is 3. Check: \\boxed{4}, and 5 more", "4"),
    ],
)
def test_boxed(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


def test_unclosed_box_is_not_an_answer() -> None:
    # a truncated generation: fall through to the other rules rather than vote with the tail
    assert extract_answer("so x = 12 and \\boxed{\\frac{3}{") == "3"
    assert extract_answer("\\boxed{\\frac{a}{") is None


def test_empty_box_falls_through() -> None:
    assert extract_answer("\\boxed{} and finally 9") == "9"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 42.", "42"),
        ("the answer is 42", "42"),
        ("THE ANSWER IS: 17\nExplanation: 3 + 14", "17"),
        ("So the final answer is **-3.5**. Thanks, 99.", "-3.5"),
        ("My final answer is $\\frac{1}{3}$.", "$\\frac{1}{3}$"),
        ("The answer is 7. Wait, the answer is 8. Done.", "8"),
        ("The answer is 3.5 m", "3.5 m"),
    ],
)
def test_the_answer_is(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


def test_dangling_answer_is_falls_through() -> None:
    assert extract_answer("We add 2 and 3. The answer is") == "3"


def test_gsm8k_hashes() -> None:
    assert extract_answer("She makes 9 * 2 = $<<9*2=18>>18.\n#### 1,234") == "1,234"
    assert answer_key("#### 1,234") == "1234"
    assert answer_key("#### -7") == "-7"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("**Answer:** the correct option is **(B)** because ...", "B"),
        ("Options considered. **D** is right.", "D"),
        ("**A** is wrong; **C** is right", "C"),
        ("\\boxed{(C)}", "C"),
        ("\\boxed{\\text{(D)}}", "D"),
        ("\\boxed{\\text{A}}", "A"),
    ],
)
def test_multiple_choice_letters(text: str, expected: str) -> None:
    assert answer_key(text) == expected


def test_bold_word_starting_with_a_letter_is_not_a_choice() -> None:
    assert answer_key("**Answer:** 12 eggs") == "12"
    assert answer_key("**Bob** has 4 apples") == "4"


def test_boxed_expression_is_not_read_as_a_choice() -> None:
    assert answer_key("\\boxed{A \\cup B}") == "A\\cupB"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She has 3 apples and 1,234 pears", "1234"),
        ("It drops to -12 degrees", "-12"),
        ("half is 0.75 of it", "0.75"),
        ("about .5 of it", "0.5"),
        ("It costs $1,000,000.", "1000000"),
    ],
)
def test_last_number_fallback(text: str, expected: str) -> None:
    assert answer_key(text) == expected


@pytest.mark.parametrize(
    "text", ["", "no idea, sorry", "<think>12</think>I cannot say.", "\\boxed{"]
)
def test_unparseable_is_none(text: str) -> None:
    assert answer_key(text) is None


# --- normalisation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variants",
    [
        ["$1,000.00", "1000", "1000.0", "\\boxed{1000}", "1,000", "1000 dollars", "\\$1000"],
        ["0.5", ".5", "0.50", "+0.5"],
        ["\\frac{1}{2}", "\\dfrac{1}{2}", "\\tfrac12", "1/2", "\\frac12"],
        ["5", "x = 5", "x=5", "5.", "5\\text{ cm}", "5^{\\circ}", "5^\\circ", "5\\%", "5%"],
        ["18", "18 dollars", "18 eggs per day", "\\text{18}", "18.000"],
        ["\\sqrt{3}", "\\sqrt3"],
        ["-7", "\u22127", "-7.0"],
        ["0", "-0", "0.000"],
        ["(1,2)", "\\left( 1, 2 \\right)"],
        ["\\infty", "infinity", "inf"],
        ["1,2,3", "1, 2, and 3", "1, 2 and 3"],
        ["3i", "3j"],
        ["\\le", "\\leq"],
        ["\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{bmatrix}1\\\\2\\end{bmatrix}"],
        ["A", "(A)", "\\text{A}", "{A}", "[A]"],
    ],
)
def test_equivalent_forms_share_a_key(variants: list[str]) -> None:
    keys = {normalize_answer(v) for v in variants}
    assert len(keys) == 1, dict(zip(variants, map(normalize_answer, variants), strict=True))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1000", "1000.5"),
        ("a+b", "c+b"),  # Qwen's MathQA unit list would delete "a" and "c" here
        ("2,3", "23"),
        ("2 and 300", "2300"),
        ("12,5", "125"),  # not a thousands separator
        ("\\frac{1}{2}", "\\frac{1}{3}"),
        ("A", "B"),
    ],
)
def test_different_answers_keep_different_keys(a: str, b: str) -> None:
    assert normalize_answer(a) != normalize_answer(b)


@pytest.mark.parametrize(
    "answer",
    ["$1,000.00", "\\dfrac12", "x = -3.50", "\\boxed{\\text{(C)}}", "1, 2, and 3", "3/4", "5 cm"],
)
def test_normalisation_is_idempotent(answer: str) -> None:
    once = normalize_answer(answer)
    assert normalize_answer(once) == once


def test_gsm8k_gold() -> None:
    assert gsm8k_gold("Some work <<2*3=6>>6\n#### 1,234") == "1234"
    with pytest.raises(ValueError, match="####"):
        gsm8k_gold("no marker 5")


def _gsm8k_rows(limit: int) -> Iterator[dict[str, str]]:
    with GSM8K_TEST.open(encoding="utf-8") as lines:
        for _, line in zip(range(limit), lines, strict=False):
            yield json.loads(line)


def test_gsm8k_solutions_yield_their_gold_key() -> None:
    rows = list(_gsm8k_rows(200))
    assert len(rows) == 200
    mismatches = {
        i: (answer_key(row["answer"]), gsm8k_gold(row["answer"]))
        for i, row in enumerate(rows)
        if answer_key(row["answer"]) != gsm8k_gold(row["answer"])
    }
    assert mismatches == {}
    # every gold key is a canonical number: no "1,234", "18.0" or "$18"
    for row in rows:
        assert re.fullmatch(r"-?\d+(?:\.\d*[1-9])?", gsm8k_gold(row["answer"]))


# --- voting -------------------------------------------------------------------------------


def test_tally_majority() -> None:
    tally: VoteTally[int] = VoteTally()
    for sample, key in enumerate(["3", "5", "5", "3", "5"]):
        tally.add(sample, key)
    assert tally.leader() == "5"
    assert dict(tally.counts) == {"3": 2, "5": 3}
    assert tally.winner_sample("5") == 1
    assert tally.agreement() == pytest.approx(3 / 5)


def test_tally_tie_goes_to_first_finished() -> None:
    # finish order: sample 7 finished first, so its answer wins the 2-2 tie (short-m@k rule)
    tally: VoteTally[int] = VoteTally()
    for sample, key in [(7, "9"), (2, "4"), (5, "4"), (0, "9")]:
        tally.add(sample, key)
    assert list(tally.counts) == ["9", "4"]
    assert tally.leader() == "9"
    assert tally.winner_sample("9") == 7
    assert tally.winner_sample("4") == 2
    assert tally.agreement() == 0.5


def test_tally_unparseable_do_not_vote() -> None:
    tally: VoteTally[str] = VoteTally()
    tally.add("a", None)
    tally.add("b", None)
    tally.add("c", "12")
    tally.add("d", None)
    assert tally.leader() == "12"
    assert tally.winner_sample("12") == "c"
    assert (tally.valid, tally.total) == (1, 4)
    assert tally.unparseable == ["a", "b", "d"]
    assert tally.agreement() == 1.0
    assert None not in tally.counts


def test_tally_empty_and_all_unparseable() -> None:
    tally: VoteTally[int] = VoteTally()
    assert (tally.leader(), tally.agreement(), tally.valid, tally.total) == (None, 0.0, 0, 0)
    tally.add(0, None)
    assert (tally.leader(), tally.agreement(), tally.valid, tally.total) == (None, 0.0, 0, 1)
    assert tally.unparseable == [0]


def test_tally_agreement_arithmetic() -> None:
    tally: VoteTally[int] = VoteTally()
    for sample, key in enumerate(["1", "1", "1", "2", "3", None, None, "1"]):
        tally.add(sample, key)
    assert (tally.valid, tally.total) == (6, 8)
    assert tally.agreement() == pytest.approx(4 / 6)


def test_tally_rejects_a_second_vote_from_one_sample() -> None:
    tally: VoteTally[int] = VoteTally()
    tally.add(0, "1")
    with pytest.raises(ValueError, match="already voted"):
        tally.add(0, "2")
    assert dict(tally.counts) == {"1": 1}


def test_tally_counts_are_read_only() -> None:
    tally: VoteTally[int] = VoteTally()
    tally.add(0, "1")
    with pytest.raises(TypeError):
        tally.counts["1"] = 5  # type: ignore[index]


def test_tally_over_answer_keys() -> None:
    completions = ["\\boxed{1,000}", "I think 999", "The answer is 1000.", "hmm", "#### 1000.00"]
    tally: VoteTally[int] = VoteTally()
    for sample, text in enumerate(completions):
        tally.add(sample, answer_key(text))
    assert (tally.leader(), tally.counts["1000"], tally.valid) == ("1000", 3, 4)
    assert tally.unparseable == [3]


# --- equivalence --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1000", "$1,000.00", True),
        ("\\frac{1}{2}", "0.5", True),
        ("-\\frac{1}{3}", "-0.33333", True),
        ("\\frac{-1}{3}", "-0.333", False),  # outside rel_tol=1e-4
        ("100000", "100001", True),  # within rel_tol=1e-4
        ("1", "2", False),
        ("20", "0.2", False),  # percentages are not merged
        ("x+1", "1+x", False),  # symbolic: only with math-verify
        ("\\frac{1}{0}", "1", False),
    ],
)
def test_answers_equivalent(a: str, b: str, expected: bool) -> None:
    assert answers_equivalent(a, b) is expected
    assert answers_equivalent(b, a) is expected


def test_numeric_verdict_says_when_the_cheap_rule_cannot_tell() -> None:
    assert answers.numeric_verdict("1,000", "1000.0") is True
    assert answers.numeric_verdict("1,000", "\\frac{1}{2}") is False  # two numbers, different
    assert answers.numeric_verdict("1000", "x+1") is None
    assert answers.numeric_verdict("x+1", "1+x") is None


async def test_buckets_without_an_equivalence_are_the_keys() -> None:
    buckets = AnswerBuckets()
    assert [await buckets.bucket(k) for k in ("0.5", "\\frac{1}{2}", None)] == [
        "0.5",
        "\\frac{1}{2}",
        None,
    ]


async def test_buckets_join_the_first_equivalent_key_and_ask_once_per_pair() -> None:
    asked: list[tuple[str, str]] = []

    async def same(a: str, b: str) -> bool:
        asked.append((a, b))
        return answers_equivalent(a, b)

    buckets = AnswerBuckets(same)
    keys = ["0.5", "7", "\\frac{1}{2}", "0.50001", "7", "\\frac{1}{2}"]
    assert [await buckets.bucket(k) for k in keys] == ["0.5", "7", "0.5", "0.5", "7", "0.5"]
    # each new key is compared with the buckets before it, in order, until one matches
    assert asked == [("7", "0.5"), ("\\frac{1}{2}", "0.5"), ("0.50001", "0.5")]


async def test_numerically_same_is_the_cheap_rule() -> None:
    assert await numerically_same("\\frac{1}{2}", "0.5")
    assert not await numerically_same("x+1", "1+x")

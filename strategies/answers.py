"""Answer extraction, normalisation and vote tallying: the one answer key every strategy uses.

As Qwen2.5-Math's and lm-eval's graders do it:

1. ``answer_region``: the text after the last ``</think>``, else the whole text.
2. ``extract_answer``: the first rule that hits wins:
   a. the last ``\\boxed{...}`` with brace matching, or ``\\boxed 5$``
      (QwenLM/Qwen2.5-Math@a45202b ``evaluation/parser.py::extract_answer``);
   b. the text after the last "the answer is" / "final answer is", to the end of its sentence;
   c. GSM8K ``#### <number>`` (EleutherAI/lm-evaluation-harness@4e7e0d4 ``gsm8k.yaml``,
      strict-match);
   d. a bold multiple-choice letter, ``**B**`` / ``**(B)**``
      (Aradhye2002/art_of_tts@4b3e790 ``utils.py::parse_output``);
   e. the last number once thousands commas are removed (Qwen, ``use_last_number=True``).
   The art_of_tts ``\\boxed{C}``, ``\\boxed{(C)}`` and ``\\boxed{\\text{(C)}}`` letter forms are
   taken by rule (a) and reduced to ``C`` by normalisation: matching them before (a) as prefixes,
   as art_of_tts does, would read ``\\boxed{A \\cup B}`` as ``A``.
3. ``normalize_answer``: Qwen ``parser.py::strip_string``, plus canonical decimals so that
   ``$1,000.00``, ``1000``, ``1000.0`` and ``\\boxed{1000}`` give one key.
4. ``VoteTally``: majority vote in finish order; ties go to the earliest answer (§0.2: the
   ``Counter.most_common`` tie-break, which in finish order is short-m@k's "shortest chain").
5. ``AnswerBuckets``: optional equivalence that merges vote buckets: ``answers_equivalent``
   (numbers within ``rel_tol=1e-4``, Qwen ``math_equal``) or a ``SameAnswer`` of the caller's,
   such as the gateway's math-verify check (``gateway.pipeline.equivalence``).

Pure standard library: ``math_verify_equivalent`` imports ``math_verify`` when it is called.
"""

from __future__ import annotations

import importlib
import logging
import math
import re
from collections.abc import Awaitable, Callable, Hashable, Mapping
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from types import MappingProxyType
from typing import Generic, TypeVar

__all__ = [
    "AnswerBuckets",
    "SameAnswer",
    "VoteTally",
    "answer_key",
    "answer_region",
    "answers_equivalent",
    "extract_answer",
    "gsm8k_gold",
    "math_verify_equivalent",
    "normalize_answer",
    "numeric_verdict",
    "numerically_same",
]

# ---------------------------------------------------------------------------------------------
# 1. Answer region
# ---------------------------------------------------------------------------------------------

_THINK_END = "</think>"


def answer_region(text: str) -> str:
    """The text after the last ``</think>``, else all of it.

    Reasoning models often box a tentative answer inside the thinking too; the one after the
    thinking is the one the model commits to.
    """
    _, sep, tail = text.rpartition(_THINK_END)
    return tail if sep else text


# ---------------------------------------------------------------------------------------------
# 2. Extraction
# ---------------------------------------------------------------------------------------------

# (b) Qwen matches the substrings "he answer is" / "final answer is"; we match them as words,
# in any case, with an optional colon, and keep the text up to the end of that sentence or line.
_ANSWER_IS = re.compile(r"\b(?:the|final)\s+answer\s+is\b:?", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\n|\.(?=\s|$)")
# (c) lm-eval gsm8k.yaml strict-match.
_GSM8K = re.compile(r"#### (-?[0-9.,]+)")
# (d) art_of_tts ``\*\*(A|B|C|D)`` and ``\*\*\((A|B|C|D)``, with E as in Qwen's
# choice_answer_clean, and a word boundary so that "**Answer:**" is not read as "A".
_BOLD_CHOICE = re.compile(r"\*\*\(?([A-E])(?![A-Za-z0-9])")
# (e) Qwen's last-number pattern.
_NUMBER = re.compile(r"-?\d*\.?\d+")


def _last_boxed(text: str) -> str | None:
    """(a) Content of the last ``\\boxed``, as Qwen reads it: ``split("boxed")[-1]``, then the
    brace-matched group, or, without a brace, everything up to the next ``$``.

    Unlike Qwen, an unclosed brace (a truncated generation) is no answer rather than the rest of
    the text.
    """
    if "boxed" not in text:
        return None
    tail = text.split("boxed")[-1]
    if not tail.startswith("{"):
        return tail.split("$")[0].strip()
    depth = 0
    for i, char in enumerate(tail):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return tail[1:i]
    return None


def _last(matches: list[str]) -> str | None:
    return matches[-1] if matches else None


def _after_answer_is(text: str) -> str | None:
    """(b) The sentence after the last "the answer is" / "final answer is"."""
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return None
    rest = _SENTENCE_END.split(text[matches[-1].end() :].lstrip(), maxsplit=1)[0]
    # Markdown emphasis around the answer: "The answer is **42**."
    return rest.strip().strip("*").strip()


def _gsm8k_number(text: str) -> str | None:
    """(c) The number after the last ``#### ``."""
    return _last(_GSM8K.findall(text))


def _bold_choice(text: str) -> str | None:
    """(d) The last bold multiple-choice letter."""
    return _last(_BOLD_CHOICE.findall(text))


def _last_number(text: str) -> str | None:
    """(e) The last number, thousands commas removed."""
    return _last(_NUMBER.findall(text.replace(",", "")))


_RULES = (_last_boxed, _after_answer_is, _gsm8k_number, _bold_choice, _last_number)


def extract_answer(text: str) -> str | None:
    """The raw answer string in ``text`` (rule 2 of this module's docstring), or None if none
    parses.

    The rules are tried in order and the first non-empty answer wins. Apply it to
    ``answer_region(text)``; ``answer_key`` does both and normalises.
    """
    for rule in _RULES:
        if answer := rule(text):
            return answer
    return None


# ---------------------------------------------------------------------------------------------
# 3. Normalisation (Qwen strip_string)
# ---------------------------------------------------------------------------------------------


def _fix_fracs(string: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{72}`` -> ``\\frac{1}{72}`` (Qwen)."""
    head, *bodies = string.split("\\frac")
    out = [head]
    for body in bodies:
        out.append("\\frac")
        if body.startswith("{"):
            out.append(body)
        elif len(body) < 2:
            return string
        elif body[1] == "{":
            out.append("{" + body[0] + "}" + body[1:])
        else:
            out.append("{" + body[0] + "}{" + body[1] + "}" + body[2:])
    return "".join(out)


def _fix_a_slash_b(string: str) -> str:
    """``3/4`` -> ``\\frac{3}{4}`` when both sides are plain integers (Qwen)."""
    match = re.fullmatch(r"(-?\d+)/(\d+)", string)
    return f"\\frac{{{match[1]}}}{{{match[2]}}}" if match else string


def _fix_sqrt(string: str) -> str:
    """``\\sqrt3`` -> ``\\sqrt{3}`` (Qwen)."""
    return re.sub(r"\\sqrt(\w+)", r"\\sqrt{\1}", string)


def _canonical_decimal(string: str) -> str:
    """``-012.50`` -> ``-12.5``, ``+7`` -> ``7``, ``-0`` -> ``0``; anything else unchanged."""
    if not re.fullmatch(r"[-+]?(?:\d+\.?\d*|\.\d+)", string):
        return string
    value = Decimal(string)
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def normalize_answer(answer: str) -> str:
    """Canonical form of an extracted answer, for use as a vote key.

    Qwen2.5-Math ``parser.py::strip_string`` step by step (rule 3 of this module's docstring),
    with these differences, each because the vote key must not merge different answers:

    - an enclosing ``\\boxed{...}`` is unwrapped first, so a boxed string and its content agree;
    - thousands commas (``1,000``) go, and whole numbers end as canonical decimals;
    - unit words go only after a number (``18 dollars`` -> ``18``, after Qwen's theoremqa rule
      ``-?[\\d.]+\\s\\D+$``): Qwen's MathQA unit list also deletes variables such as ``a``,
      ``c`` or ``m`` anywhere in the string;
    - ``and`` becomes a comma (``2 and 3`` = ``2, 3``; Qwen's deletion makes it ``23``), and it
      and ``inf`` are replaced as words only, not inside ``\\land`` or ``\\inf``;
    - the bracket strip around alphanumerics works (Qwen's test ``"{A}".isalnum()`` never holds);
    - number words (``word2number``) are not converted: that needs a third-party package.
    """
    string = answer.strip()
    if "\\boxed" in string and (boxed := _last_boxed(string)) is not None:
        string = boxed.strip()
    string = string.replace("\n", "").rstrip(".").replace("\\!", "")
    string = string.replace("\u2212", "-")  # the Unicode minus some models emit

    # matrices
    string = re.sub(r"\\begin\{array\}\{.*?\}", r"\\begin{pmatrix}", string)
    string = re.sub(r"\\end\{array\}", r"\\end{pmatrix}", string)
    string = string.replace("bmatrix", "pmatrix")

    string = string.replace("tfrac", "frac").replace("dfrac", "frac")
    string = string.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    string = string.replace("\\left", "").replace("\\right", "")
    string = string.replace("\\{", "{").replace("\\}", "}")

    # units: a trailing \text{...} ("5\text{ cm}"), unless it is the whole answer ("\text{A}")
    if unitless := re.sub(r"\\text\{.*?\}$", "", string).strip():
        string = unitless

    string = string.replace("^{\\circ}", "").replace("^\\circ", "")
    string = string.replace("\\$", "").replace("$", "")
    string = string.replace("\\(", "").replace("\\)", "")
    string = re.sub(r"\\text\{(.*?)\}", r"\1", string)
    for prefix in ("x=", "y=", "z=", "x\\in", "y\\in", "z\\in", "x\\to", "y\\to", "z\\to"):
        string = string.replace(prefix, "")
    string = string.replace("\\emptyset", "{}")
    string = string.replace("(-\\infty,\\infty)", "\\mathbb{R}")
    string = string.replace("\\%", "").replace("%", "")

    string = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", string)
    # units: words after a number ("18 dollars", "3 hours per day")
    string = re.sub(r"^(-?[\d.]+)\s+[A-Za-z][A-Za-z\s.]*$", r"\1", string)

    string = string.replace(" .", " 0.").replace("{.", "{0.")
    if len(string) > 2 and string[0] + string[-1] in ("{}", "()", "[]") and string[1:-1].isalnum():
        string = string[1:-1]

    string = string.replace("infinity", "\\infty")
    if "\\infty" not in string:
        string = re.sub(r"\binf\b", r"\\infty", string)
    string = re.sub(r",?\s*\band\b\s*", ",", string)
    string = string.replace("\\mathbf", "")
    string = re.sub(r"\\mbox\{.*?\}", "", string)
    if "j" in string and "i" not in string:
        string = string.replace("j", "i")

    # 12.000 -> 12, also inside expressions
    string = re.sub(r"(\d+)\.0*([^\d])", r"\1\2", string)
    string = re.sub(r"(\d+)\.0*$", r"\1", string)
    if string.startswith("."):
        string = "0" + string

    # "k = 5" -> "5" when the left-hand side is at most two characters
    lhs, eq, rhs = string.partition("=")
    if eq and "=" not in rhs and len(lhs) <= 2:
        string = rhs

    string = _fix_sqrt(string).replace(" ", "")
    string = _fix_a_slash_b(_fix_fracs(string))
    return _canonical_decimal(string)


def answer_key(text: str) -> str | None:
    """``normalize_answer(extract_answer(answer_region(text)))``: the key a completion votes
    with, or None if it has no answer (and then does not vote)."""
    raw = extract_answer(answer_region(text))
    if raw is None:
        return None
    return normalize_answer(raw) or None


def gsm8k_gold(answer_field: str) -> str:
    """The key of a GSM8K ``answer`` field: the normalised text after its last ``####``."""
    _, sep, gold = answer_field.rpartition("####")
    if not sep:
        raise ValueError("GSM8K answer field has no '####' line")
    return normalize_answer(gold)


# ---------------------------------------------------------------------------------------------
# 4. Voting
# ---------------------------------------------------------------------------------------------

SampleId = TypeVar("SampleId", bound=Hashable)


class VoteTally(Generic[SampleId]):
    """Majority vote over answer keys, fed in finish order.

    Ties go to the key that was voted for first, as ``Counter.most_common`` does in lm-eval and
    Qwen2.5-Math. Adding answers as the samples finish therefore makes the tie-break
    "shortest chain wins", the short-m@k rule. A None key (unparseable answer) is recorded but does
    not vote.
    """

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._first_voter: dict[str, SampleId] = {}
        self._seen: set[SampleId] = set()
        self.unparseable: list[SampleId] = []
        """Samples without an answer, in finish order."""

    def add(self, sample_id: SampleId, key: str | None) -> None:
        """Record the answer of a sample that just finished."""
        if sample_id in self._seen:
            raise ValueError(f"sample {sample_id!r} has already voted")
        self._seen.add(sample_id)
        if key is None:
            self.unparseable.append(sample_id)
            return
        self._counts[key] = self._counts.get(key, 0) + 1
        self._first_voter.setdefault(key, sample_id)

    @property
    def counts(self) -> Mapping[str, int]:
        """Votes per key, in order of each key's first vote."""
        return MappingProxyType(self._counts)

    @property
    def valid(self) -> int:
        """Number of samples that voted."""
        return sum(self._counts.values())

    @property
    def total(self) -> int:
        """Number of samples recorded, unparseable ones included."""
        return len(self._seen)

    def leader(self) -> str | None:
        """The key with the most votes, the earliest on ties; None while nobody has voted."""
        # max() keeps the first of equal maxima, and dicts iterate in insertion order.
        return max(self._counts, key=self._counts.__getitem__, default=None)

    def agreement(self) -> float:
        """The leader's share of the valid votes (0.0 when there are none): the cascade
        deferral signal (arXiv 2310.03094)."""
        return max(self._counts.values()) / self.valid if self._counts else 0.0

    def settled(self, remaining: int) -> bool:
        """True when ``remaining`` more votes cannot change the leader: it is ahead of every
        other key, and of any key not seen yet, by more than ``remaining``."""
        if not self._counts:
            return False
        top, *rest = sorted(self._counts.values(), reverse=True)
        return top > (rest[0] if rest else 0) + remaining

    def winner_sample(self, key: str) -> SampleId:
        """The first sample that voted for ``key`` (the shortest chain, in finish order)."""
        return self._first_voter[key]


# ---------------------------------------------------------------------------------------------
# 5. Equivalence
# ---------------------------------------------------------------------------------------------

_REL_TOL = 1e-4  # Qwen grader.py::math_equal(is_close=True)
_FRAC = re.compile(r"(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}")


def _as_number(key: str) -> float | None:
    """The value of a canonical decimal or of ``\\frac{a}{b}`` with numeric a and b."""
    try:
        if frac := _FRAC.fullmatch(key):
            value = Fraction(Decimal(frac[2])) / Fraction(Decimal(frac[3]))
            return float(-value if frac[1] else value)
        return float(Decimal(key)) if re.fullmatch(r"-?\d+(?:\.\d+)?", key) else None
    except (InvalidOperation, ZeroDivisionError):
        return None


def numeric_verdict(a: str, b: str) -> bool | None:
    """The cheap rule's verdict: True when equal strings after normalisation or equal as
    numbers within ``rel_tol=1e-4`` (Qwen ``math_equal``); False when both are numbers (or
    numeric fractions) and differ, which no symbolic check could overturn; None when the rule
    cannot tell. Percentage variants (x vs x/100) are not merged."""
    a, b = normalize_answer(a), normalize_answer(b)
    if a == b:
        return True
    x, y = _as_number(a), _as_number(b)
    if x is None or y is None:
        return None
    return math.isclose(x, y, rel_tol=_REL_TOL)


def answers_equivalent(a: str, b: str) -> bool:
    """Cheap equivalence: ``numeric_verdict`` is True."""
    return numeric_verdict(a, b) is True


def math_verify_equivalent(a: str, b: str) -> bool:
    """``verify(a, b) or verify(b, a)`` (math-verify is not symmetric). Slow (sympy) and
    possibly unbounded: the gateway runs it only in a worker process it can kill
    (``gateway.pipeline.equivalence``).

    Both of math-verify's timeouts are off (``None``): they use ``signal.alarm``, which only
    works in a main thread; the caller enforces the timeout instead.
    """
    math_verify = importlib.import_module("math_verify")
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # one "timeout disabled" per call
    parsed_a = math_verify.parse(f"${a}$", parsing_timeout=None)
    parsed_b = math_verify.parse(f"${b}$", parsing_timeout=None)
    return bool(
        math_verify.verify(parsed_a, parsed_b, timeout_seconds=None)
        or math_verify.verify(parsed_b, parsed_a, timeout_seconds=None)
    )


SameAnswer = Callable[[str, str], Awaitable[bool]]
"""Whether two answer keys say the same thing; may be slow, so awaited."""


async def numerically_same(a: str, b: str) -> bool:
    """``answers_equivalent`` as a ``SameAnswer``."""
    return answers_equivalent(a, b)


class AnswerBuckets:
    """One request's vote buckets: each answer key joins the bucket of the first earlier key it
    is the same answer as (``same``), else opens a bucket of its own. Without ``same``, keys
    vote as they are (normalised strings, ``answer_key``).

    Keys are compared at most once each way per request, in the order they were first seen, so
    the bucket a key lands in does not depend on the order of later answers.
    """

    def __init__(self, same: SameAnswer | None = None) -> None:
        self._same = same
        self._bucket_of: dict[str, str] = {}
        self._buckets: list[str] = []

    async def bucket(self, key: str | None) -> str | None:
        """The bucket ``key`` votes in; None (no vote) for None."""
        if key is None or self._same is None:
            return key
        if key in self._bucket_of:
            return self._bucket_of[key]
        for existing in self._buckets:
            if await self._same(key, existing):
                self._bucket_of[key] = existing
                return existing
        self._buckets.append(key)
        self._bucket_of[key] = key
        return key

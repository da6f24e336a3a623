"""How a sample's output is split into thinking and answer (``gateway.openai.thinking``), and
the prompt that continues a sample whose thinking was cut at its budget."""

from __future__ import annotations

import pytest

from gateway.openai.thinking import ThinkingMode, ThinkingSplit

END = "\n</think>\n\n"


def split(mode: ThinkingMode, deltas: list[tuple[str, str]]) -> ThinkingSplit:
    """Feed (content, reasoning) deltas of one token each, then the end of the sample."""
    s = ThinkingSplit(mode)
    for content, reasoning in deltas:
        s.feed(content, reasoning, 1)
    s.flush()
    return s


def parts(s: ThinkingSplit) -> tuple[str, str, int, int]:
    return "".join(s.thinking), "".join(s.answer), s.thinking_tokens, s.answer_tokens


def test_tags_in_the_content_are_thinking_up_to_the_close_tag_even_split_over_tokens() -> None:
    s = split(
        "auto",
        [
            *[("<th", ""), ("ink>", ""), ("a", ""), (" b", ""), ("</", ""), ("think>", "")],
            *[("\n\n", ""), ("The answer is 42", "")],
        ],
    )
    # the tags' tokens and the thinking's are thinking; the blank line after is answer
    assert parts(s) == ("a b", "The answer is 42", 6, 2)
    assert not s.thinking_open


def test_reasoning_deltas_are_thinking_and_content_is_the_answer() -> None:
    s = split("auto", [("", "let me"), ("", " see"), ("", "\n"), ("42", "")])
    assert parts(s) == ("let me see\n", "42", 3, 1)
    assert s.parsed_by_engine


def test_auto_content_without_an_opening_tag_is_all_answer() -> None:
    s = split("auto", [("Hello", ""), (" <think>", ""), (" x", "")])
    assert parts(s) == ("", "Hello <think> x", 0, 3)


def test_opened_content_is_thinking_until_the_close_tag() -> None:
    s = split("opened", [("step", ""), (" one", ""), ("</think>", ""), ("7", "")])
    assert parts(s) == ("step one", "7", 3, 1)


def test_none_never_reads_tags() -> None:
    s = split("none", [("<think>", ""), ("x", ""), ("</think>", "")])
    assert parts(s) == ("", "<think>x</think>", 0, 3)


def test_a_held_partial_tag_is_text_when_the_sample_ends() -> None:
    s = split("auto", [("<thi", "")])  # ended before the tag could be completed
    assert parts(s) == ("", "<thi", 0, 1)
    t = split("opened", [("abc </thi", "")])
    assert parts(t) == ("abc </thi", "", 1, 0)
    assert t.thinking_open


@pytest.mark.parametrize(
    ("mode", "deltas", "rendered", "prompt"),
    [
        # cut while thinking, the model wrote the opening tag: its text, then the delimiter
        ("auto", [("<think>", ""), ("a b", "")], "P", "P<think>a b" + END),
        # the template opened it: the rendering ends with it, the text follows
        ("opened", [("a b", "")], "P<think>\n", "P<think>\na b" + END),
        # the engine parsed the thinking out: it is put back between tags
        ("auto", [("", "a b")], "P", "P<think>\na b" + END),
        ("auto", [("", "a b")], "P<think>\n", "P<think>\na b" + END),
        # the answer had begun: continued as it was, no second delimiter
        (
            "auto",
            [("<think>", ""), ("a", ""), ("</think>", ""), ("\n\nx", "")],
            "P",
            "P<think>a</think>\n\nx",
        ),
        ("auto", [("", "a"), ("x", "")], "P", "P<think>\na" + END + "x"),
        # a model that does not think: its answer so far
        ("auto", [("plain", "")], "P", "Pplain"),
        # budget 0: nothing generated, an empty thinking closed at once
        ("auto", [], "P", "P<think>\n" + END),
        ("opened", [], "P<think>\n", "P<think>\n" + END),
        ("none", [], "P", "P"),
    ],
)
def test_the_continuation_prompt(
    mode: ThinkingMode, deltas: list[tuple[str, str]], rendered: str, prompt: str
) -> None:
    s = ThinkingSplit(mode)
    for content, reasoning in deltas:
        s.feed(content, reasoning, 1)
    s.flush()
    assert s.prompt_after(rendered, END) == prompt


def test_after_a_cut_the_continuation_is_answer() -> None:
    s = ThinkingSplit("opened")
    s.feed("thinking", "", 1)
    assert s.thinking_open
    s.continue_answer()
    assert s.feed("</think> 42", "", 1) == ("</think> 42", "")
    assert parts(s) == ("thinking", "</think> 42", 1, 1)


def test_a_cut_inside_the_close_tag_drops_the_partial_tag_before_the_delimiter() -> None:
    s = ThinkingSplit("opened")
    s.feed("abc </", "", 1)
    s.flush()
    assert s.prompt_after("P<think>\n", END) == "P<think>\nabc " + END


def test_a_cut_before_the_text_says_whether_it_thinks_closes_an_empty_thinking() -> None:
    s = ThinkingSplit("auto")
    s.feed("\n<thi", "", 1)  # budget 1 ran out on part of the opening tag
    s.flush()
    assert s.undecided and not s.thinking_open
    assert s.prompt_after("P", END) == "P<think>\n" + END


def test_the_blank_line_an_engine_puts_after_parsed_thinking_is_not_answer() -> None:
    s = split("auto", [("", "hmm"), ("\n\n", ""), ("42", "")])
    assert parts(s) == ("hmm", "42", 1, 2)

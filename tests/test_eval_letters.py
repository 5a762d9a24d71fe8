"""The multiple-choice prompt and the rule that reads an option letter from a reply."""

from __future__ import annotations

import pytest

from vcast.eval.letters import INSTRUCTION, build_prompt, extract_letter, strip_labels

OPTIONS = ("red", "green", "blue", "yellow")


@pytest.mark.parametrize(
    ("reply", "letter"),
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("B) green", "B"),
        ("[C]", "C"),
        ("The answer is B", "B"),
        ("The best answer is: D. yellow", "D"),
        ("Answer: C", "C"),  # Video-MME's official regex reads the A of "Answer"
        ("**D**", "D"),
        ("`A`", "A"),
        ("b) red", "B"),  # a lowercase label
        ("c", "C"),
        ("(d)", "D"),
        ("blue", "C"),  # the option's text only
        ("Blue.", "C"),
        ("I think it is C", "C"),
        ("The answer is B, not A", "B"),  # a leading label wins over a later mention
        ("B. Not A, because the square is green", "B"),
        ("C\nBecause the square is blue. A is wrong.", "C"),  # only the first line counts
        ("The square is yellow.", "D"),  # one option's text inside a sentence
        ("A and B", None),  # two letters, none picked
        ("A or C", None),
        ("", None),
        ("   ", None),
        ("I cannot tell from the video.", None),
        ("a dog runs across the field", None),  # a lowercase article is no letter
        ("E", None),  # no such option
        ("red or blue", None),  # two options' texts
    ],
)
def test_extract_letter_reads_reply_shapes(reply: str, letter: str | None):
    assert extract_letter(reply, OPTIONS) == letter


def test_extract_letter_prefers_an_exact_option_text_over_a_leading_article():
    options = ("A cat", "A dog", "A bird")
    assert extract_letter("A dog", options) == "B"
    assert extract_letter("a bird.", options) == "C"


def test_extract_letter_takes_the_longer_option_when_one_contains_another():
    assert extract_letter("It is dark red.", ("red", "dark red", "blue")) == "B"


def test_extract_letter_reads_counts_by_their_text():
    options = ("1", "2", "3", "4")
    assert extract_letter("3", options) == "C"
    assert extract_letter("There are 2 dots.", options) == "B"


def test_strip_labels_removes_only_a_complete_sequence_of_labels():
    assert strip_labels(["A. red", "B. green", "C. blue"]) == ("red", "green", "blue")
    assert strip_labels(["A) red", "B) green"]) == ("red", "green")
    # An option that merely starts with a capital A keeps its text.
    assert strip_labels(["A man", "Two men"]) == ("A man", "Two men")
    assert strip_labels(["B. red", "A. green"]) == ("B. red", "A. green")


def test_build_prompt_lists_lettered_options_then_the_instruction():
    prompt = build_prompt(" What colour is the square? ", ("red", "green"))
    assert prompt == f"What colour is the square?\nA. red\nB. green\n{INSTRUCTION}"
    assert INSTRUCTION == "Answer with the option's letter from the given choices directly."

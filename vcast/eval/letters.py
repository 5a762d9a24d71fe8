"""Multiple-choice prompts and reading the chosen option's letter from a model's reply.

The prompt is the question, one "A. option" line per option (Video-MME's own option format) and
lmms-eval's MVBench instruction, "Answer with the option's letter from the given choices directly.", the
same for every benchmark so that all passes and all benchmarks are asked the same way.

`extract_letter` follows the official scorers (Video-MME's `extract_characters_regex`: drop "The answer
is"-style prefixes, then take the option letter; MVBench's `mcq_acc` in lmms-eval: "B. text" -> B, else a
standalone letter, else compare the option text), with three fixes for replies they misread:
letters inside words never count (Video-MME's scorer reads "Answer: C" as A, from "Answer"); a reply
that names two different letters without picking one ("A and B") is no answer rather than the first
letter; and a lowercase letter counts only where it is clearly a label ("b) red", "(c)", "d.").
Sources: github.com/EvolvingLMMs-Lab/lmms-eval, lmms_eval/tasks/videomme/utils.py and
lmms_eval/tasks/mvbench/utils.py; the instruction is the post_prompt of
lmms_eval/tasks/mvbench/mvbench_action_sequence.yaml (and its sibling task files).
"""

from __future__ import annotations

import re
import string

INSTRUCTION = "Answer with the option's letter from the given choices directly."
LETTERS = string.ascii_uppercase

# Phrases models put before the letter; removed before looking for it (longest first).
_PREFIXES = (
    "the best answer is",
    "the correct answer is",
    "the best option is",
    "the correct option is",
    "the answer is",
    "best answer:",
    "best option:",
    "correct answer:",
    "final answer:",
    "answer:",
    "option:",
)
_LABEL = re.compile(r"^\s*([A-Z])\s*[.)]\s+(\S.*)$", re.DOTALL)  # "A. text" or "A) text"
_MARKUP = re.compile(r"[*_`#]")  # markdown emphasis, code and headings
_STANDALONE_UPPER = re.compile(r"(?<![A-Za-z0-9'])([A-Z])(?![A-Za-z0-9'])")
_LEADING_LABEL = re.compile(r"^[(\[]?([A-Za-z])(?:[)\].:,]|$)")  # "(b)", "b)", "B.", "c:", "d"
_LEADING_UPPER = re.compile(r"^[(\[]?([A-Z])(?![A-Za-z0-9'])")
_NON_WORD = re.compile(r"[^\w\s]")


def option_letter(index: int) -> str:
    """0 -> "A", 1 -> "B", ..."""
    if not 0 <= index < len(LETTERS):
        raise ValueError(f"an item may have at most {len(LETTERS)} options, got index {index}")
    return LETTERS[index]


def strip_labels(options: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Option texts without their letters when every option carries its own ("A. x", "B. y", ...),
    as Video-MME's options do; otherwise unchanged (an option may itself start with "A ")."""
    matches = [_LABEL.match(o) for o in options]
    if options and all(m is not None and m.group(1) == option_letter(i) for i, m in enumerate(matches)):
        return tuple(m.group(2).strip() for m in matches)
    return tuple(o.strip() for o in options)


def build_prompt(question: str, options: tuple[str, ...] | list[str]) -> str:
    """Question, then "A. option" per line, then the instruction."""
    lines = [question.strip()] + [f"{option_letter(i)}. {text}" for i, text in enumerate(options)]
    return "\n".join([*lines, INSTRUCTION])


def _normalise(text: str) -> str:
    """Lowercase words separated by single spaces, punctuation dropped: for comparing option texts."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def _strip_prefixes(text: str) -> str:
    lowered = text.lower()
    for prefix in _PREFIXES:
        at = lowered.find(prefix)
        if at >= 0:
            text, lowered = text[at + len(prefix) :], lowered[at + len(prefix) :]
    return text.strip().lstrip(":").strip()


def _by_option_text(reply: str, options: tuple[str, ...]) -> str | None:
    """The letter of the one option whose text the reply is, or alone contains (as whole words)."""
    said = f" {_normalise(reply)} "
    texts = [_normalise(o) for o in options]
    exact = [i for i, t in enumerate(texts) if t and said.strip() == t]
    if len(exact) == 1:
        return option_letter(exact[0])
    found = [i for i, t in enumerate(texts) if t and f" {t} " in said]
    # An option contained in another one found ("red" in "dark red") is not a second answer.
    found = [i for i in found if not any(j != i and texts[i] in texts[j] for j in found)]
    return option_letter(found[0]) if len(found) == 1 else None


def extract_letter(reply: str, options: tuple[str, ...] | list[str]) -> str | None:
    """The option letter a reply picks, or None when it picks none or is ambiguous.

    In order: (1) the reply is exactly one option's text -> that option; (2) after markup and
    "The answer is"-style prefixes are removed, the reply starts with a label ("B", "(B)", "B.", "b)") and
    names no other letter, or names exactly one standalone capital letter -> that letter; a reply that
    starts with a label keeps it even when it mentions another letter later ("B. Not A"); (3) the reply
    contains exactly one option's text -> that option. Only letters of existing options count.
    """
    options = tuple(options)
    valid = set(LETTERS[: len(options)])
    text = _MARKUP.sub("", reply or "").strip()
    if not text:
        return None
    if _normalise(text) in {_normalise(o) for o in options}:
        return _by_option_text(text, options)
    body = _strip_prefixes(text)
    # Video-MME's and MVBench's official scripts read the first line of a long reply.
    first_line = body.splitlines()[0].strip() if body.strip() else ""
    named = {m.group(1) for m in _STANDALONE_UPPER.finditer(first_line)} & valid
    leading = _LEADING_LABEL.match(first_line) or _LEADING_UPPER.match(first_line)
    lead = leading.group(1).upper() if leading else None
    if lead in valid and (named <= {lead} or _LEADING_LABEL.match(first_line)):
        return lead
    if len(named) == 1:
        return named.pop()
    if len(named) > 1:
        return None
    return _by_option_text(body, options)

"""The final answer of a response, in the Qwen2.5-Math toolkit's order: Minerva's ending "The
final answer is X. I hope it is correct.", else the last `\\boxed{}` (`\\fbox{}`,
`\\framebox{}`), else the text after the last "the answer is" / "final answer is", else
GSM8K's `#### N`, else the last number.

Responses are untrusted and long (10,240 tokens), so every step is a `rfind`/`find`, one brace
scan, or a regular expression that cannot backtrack more than a bounded amount per position:
the time is linear in the length of the response."""

from __future__ import annotations

import re
import string

_BOX_COMMANDS = ("\\boxed", "\\fbox", "\\framebox")
_MINERVA_START = "final answer is"
_MINERVA_END = ". i hope it is correct"
_ANSWER_PHRASES = ("the answer is", "final answer is")
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_MATH_CLOSERS = {"$$": "$$", "$": "$", "\\(": "\\)", "\\[": "\\]"}
# Boxes side by side: at most this many, with at most this much between two of them.
_MAX_SIDE_BY_SIDE = 20
_MAX_BOX_GAP = 40
_SEPARATOR_WORDS = re.compile(
    r"\\(?:quad|qquad|text\{\s*(?:and|or)\s*\}|[,;: ])|\b(?:and|or)\b|\b[A-Za-z] ?="
)
# Lower-casing that keeps every index (str.lower can lengthen some non-ASCII letters).
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _box_span(text: str, start: int, stop: int) -> tuple[str, int] | None:
    """(argument, end index) of the box command at `start`, looking no further than `stop`:
    braces balanced; `\\boxed 5` (one token, up to whitespace or `$`); a box left open by a
    cut-off response gives what follows it, as the toolkit does."""
    i = start + 1
    while i < stop and text[i].isalpha():
        i += 1
    j = i
    while j < stop and text[j] == " ":
        j += 1
    if j >= stop:
        return None
    if text[j] != "{":
        if j == i:
            return None  # \boxedx: another command
        end = j
        while end < stop and not text[end].isspace() and text[end] != "$":
            end += 1
        return (text[j:end], end) if end > j else None
    depth = 0
    k = j
    while k < stop:
        ch = text[k]
        if ch == "\\":  # \{ and \} are braces as characters, not a group
            k += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[j + 1 : k].strip(), k + 1
        k += 1
    return text[j + 1 : stop].strip(), stop


def _last_box_start(text: str, stop: int) -> int:
    return max(text.rfind(command, 0, stop) for command in _BOX_COMMANDS)


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox`, `\\framebox`), else None."""
    start = _last_box_start(text, len(text))
    if start < 0:
        return None
    span = _box_span(text, start, len(text))
    return span[0] if span else None


def _final_boxes(text: str) -> str | None:
    """The last box, with the boxes right before it that only separators part from it
    (`\\boxed{2} and \\boxed{3}` is the answer "2, 3"); repeated contents count once."""
    start = _last_box_start(text, len(text))
    if start < 0:
        return None
    span = _box_span(text, start, len(text))
    if span is None:
        return None
    answers = [span[0]]
    for _ in range(_MAX_SIDE_BY_SIDE):
        previous = _last_box_start(text, start)
        if previous < 0 or start - previous > _MAX_BOX_GAP + 2000:
            break
        prev_span = _box_span(text, previous, start)
        if prev_span is None or prev_span[1] > start:
            break
        gap = text[prev_span[1] : start]
        if len(gap) > _MAX_BOX_GAP or "\n" in gap or _SEPARATOR_WORDS.sub("", gap).strip(" $,;"):
            break
        if prev_span[0] not in answers:
            answers.insert(0, prev_span[0])
        start = previous
    return ", ".join(answers)


def _minerva_answer(text: str, lower: str) -> str | None:
    """X in "The final answer is X. I hope it is correct." (Minerva's few-shot ending)."""
    start = lower.rfind(_MINERVA_START)
    if start < 0:
        return None
    start += len(_MINERVA_START)
    end = lower.find(_MINERVA_END, start)
    if end < 0:
        return None
    answer = text[start:end].strip()
    if "\n" in answer:
        return None  # the phrase and the ending are in different sentences
    if answer.startswith("$") and answer.endswith("$"):
        answer = answer.strip("$").strip()
    return answer or None


def _phrase_answer(text: str, lower: str) -> str | None:
    """The answer after the last "the answer is" / "final answer is": a math span (`$...$`,
    `\\(...\\)`), a box inside it, or the rest of its sentence."""
    found = [(lower.rfind(p), p) for p in _ANSWER_PHRASES]
    at, phrase = max(found)
    if at < 0:
        return None
    start = at + len(phrase)
    rest = text[start:].lstrip(" :\t*")
    newline = rest.find("\n")
    line = rest if newline < 0 else rest[:newline]
    boxed = last_boxed(line)
    if boxed is not None:
        return boxed
    for opener, closer in _MATH_CLOSERS.items():
        if line.startswith(opener):
            end = line.find(closer, len(opener))
            if end > 0:
                return line[len(opener) : end].strip() or None
            break
    sentence_end = line.find(". ")
    if sentence_end >= 0:
        line = line[:sentence_end]
    answer = line.strip().rstrip(".").strip().strip("*$").strip()
    return answer or None


def _hashes_answer(text: str) -> str | None:
    """GSM8K's `#### N`."""
    start = text.rfind("####")
    if start < 0:
        return None
    line = text[start + 4 :].split("\n", 1)[0]
    answer = line.strip().rstrip(".").strip().strip("$").replace(",", "")
    return answer or None


def _last_number(text: str) -> str | None:
    last = None
    for match in _NUMBER.finditer(text):
        last = match
    return last.group().replace(",", "") if last else None


def extract_answer(response: str) -> str | None:
    """The final answer of `response`, or None when it states none."""
    lower = response.translate(_ASCII_LOWER)
    answer = _minerva_answer(response, lower)
    if answer is None:
        answer = _final_boxes(response)
    if answer is None:
        answer = _phrase_answer(response, lower)
    if answer is None:
        answer = _hashes_answer(response)
    if answer is None:
        answer = _last_number(response)
    return answer

"""The final answer of a response: the last `\\boxed{}`, else "the answer is ...", else GSM8K's
`#### N`, else the last number (the Qwen2.5-Math evaluator's order)."""

from __future__ import annotations

import re

_BOX_COMMANDS = ("\\boxed", "\\fbox", "\\framebox")
_ANSWER_IS = re.compile(r"(?:final answer|the answer) is[:\s]*(.+)", re.IGNORECASE)
_HASHES = re.compile(r"####\s*(.+)")
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (braces balanced; `\\boxed 5` also read)."""
    best_start = -1
    for command in _BOX_COMMANDS:
        best_start = max(best_start, text.rfind(command))
    if best_start < 0:
        return None
    i = best_start + 1
    while i < len(text) and text[i].isalpha():
        i += 1
    rest = text[i:]
    if rest.startswith(" ") and not rest.lstrip().startswith("{"):
        # `\boxed 5`: one token, up to whitespace or `$`.
        return re.split(r"[\s$]", rest.lstrip(), maxsplit=1)[0] or None
    rest = rest.lstrip()
    if not rest.startswith("{"):
        return None
    depth = 0
    for j, ch in enumerate(rest):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return rest[1:j].strip()
    return None  # unbalanced: the response was cut off inside the box


def _clean_tail(text: str) -> str:
    """The answer phrase up to the end of its sentence, without math delimiters."""
    text = text.strip().split("\n")[0]
    text = re.sub(r"\.\s*$", "", text.strip())
    return text.strip().strip("$").strip()


def extract_answer(response: str) -> str | None:
    """The final answer of `response`, or None when it states none."""
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed
    matches = _ANSWER_IS.findall(response)
    if matches:
        inner = last_boxed(matches[-1])
        answer = inner if inner is not None else _clean_tail(matches[-1])
        if answer:
            return answer
    matches = _HASHES.findall(response)
    if matches:
        answer = _clean_tail(matches[-1]).replace(",", "")
        if answer:
            return answer
    numbers = _NUMBER.findall(response)
    if numbers:
        return numbers[-1].replace(",", "")
    return None

"""Calibration files: s1K-style JSONL lines, the fields each method reads, and their
rendering and tokenization as the model meets such text in use."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from l2smerge.util.errors import L2SError
from l2smerge.util.jsonl import iter_jsonl

CALIBRATION_FIELDS = ("question", "short_answer", "long_answer")
# The study's best calibration text per method (AIM: question + short answer; Sens: all).
METHOD_FIELDS: dict[str, tuple[str, ...]] = {
    "aim": ("question", "short_answer"),
    "sens": ("question", "short_answer", "long_answer"),
}
DEFAULT_MAX_TOKENS = 1024  # per calibration text; longer texts are truncated


def parse_fields(fields: str | Sequence[str] | None, method: str) -> tuple[str, ...]:
    """'question,short_answer' or a sequence -> validated tuple; None -> the method's default."""
    if fields is None:
        return METHOD_FIELDS[method]
    names = [f.strip() for f in fields.split(",")] if isinstance(fields, str) else list(fields)
    names = [n for n in names if n]
    bad = [n for n in names if n not in CALIBRATION_FIELDS]
    if bad or not names:
        raise L2SError(
            f"calibration fields {','.join(names) or '(none)'!r}: choose from "
            f"{', '.join(CALIBRATION_FIELDS)}"
        )
    return tuple(dict.fromkeys(names))


Sample = dict[str, str]  # the chosen fields of one calibration line, in the chosen order


def read_calibration(path: str | Path, fields: Sequence[str]) -> list[Sample]:
    """The chosen fields of every line of a JSONL calibration file. Every line must be a JSON
    object whose chosen fields are non-empty strings; other fields are ignored."""
    path = Path(path)
    if not path.is_file():
        raise L2SError(f"{path}: calibration file not found")
    samples = []
    try:
        for number, record in iter_jsonl(path):
            sample = {}
            for field in fields:
                value = record.get(field)
                if not isinstance(value, str) or not value.strip():
                    raise L2SError(
                        f"{path}:{number}: field {field!r} missing or not a non-empty string"
                    )
                sample[field] = value.strip()
            samples.append(sample)
    except (OSError, UnicodeDecodeError) as exc:
        raise L2SError(f"{path}: cannot read calibration file ({exc})") from exc
    if not samples:
        raise L2SError(f"{path}: calibration file has no samples")
    return samples


def render_sample(sample: Sample, tokenizer: Any = None) -> str:
    """One calibration text as the model meets such text in use: the question in the study's
    prompt (`qwen25-math-cot`, the raw ChatML string `l2smerge eval` sends every model, whatever
    its chat template; `tokenizer` is not needed for it), then the chosen answers, joined by a
    blank line, as the assistant's reply. Without "question", just the answers."""
    from l2smerge.eval.prompts import STUDY_PROMPT, PromptBuilder

    answers = "\n\n".join(value for field, value in sample.items() if field != "question")
    if "question" not in sample:
        return answers
    return PromptBuilder(STUDY_PROMPT)(sample["question"]).text + answers


def tokenize(model_path: Path, samples: Sequence[Sample], max_tokens: int) -> list[torch.Tensor]:
    from transformers import AutoTokenizer

    from l2smerge.calibration.models import refuse_custom_code

    refuse_custom_code(model_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=False)
    except Exception as exc:
        raise L2SError(f"{model_path}: cannot load its tokenizer ({exc})") from exc
    ids = []
    for sample in samples:
        text = render_sample(sample, tokenizer)
        encoded = tokenizer(text, truncation=True, max_length=max_tokens)["input_ids"]
        if encoded:
            ids.append(torch.tensor(encoded, dtype=torch.long))
    if not ids:
        raise L2SError(f"{model_path}: its tokenizer turned every calibration text into 0 tokens")
    return ids

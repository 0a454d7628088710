"""Responses produced elsewhere (another harness, a production log), read from JSONL lines
`{"bench": ..., "id": <0-based line number>, "response": ...}`, or for a free-form task
`{"task": ..., "id": <its id>, "response": ...}` (docs/tasks.md). Optional per line:
`"truncated": bool` or `"finish_reason": "length"`, and `"tokens": int` (used when no
tokenizer is given: then every replayed line needs it, or none may have it, so that a mean
length never covers a subset).

Several sampled responses per item: every line carries `"sample": 0, 1, ...`, each item the
same samples 0..n-1 (a file numbers all its lines or none); they become a sampled run
(avg@n, pass@n: docs/eval.md)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from l2smerge.eval.backends.base import Generation, Request, count_tokens, load_tokenizer
from l2smerge.util.errors import L2SError
from l2smerge.util.jsonl import iter_jsonl


class ReplayBackend:
    def __init__(
        self,
        model: str,
        *,
        responses: str | Path | None = None,
        tokenizer: Any | None = None,
        **_ignored: Any,
    ):
        if responses is None:
            raise L2SError("--backend replay needs --responses FILE (JSONL of bench, id, response)")
        self.path = Path(responses)
        if not self.path.is_file():
            raise L2SError(f"replay file {self.path} not found")
        if isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self.stop_ids: tuple[int, ...] = ()  # the responses are replayed as they are
        self.context_length: int | None = None
        # per item (bench or task, id as given), its lines by sample (None: not sampled)
        self.lines: dict[tuple[str, Any], dict[int | None, dict[str, Any]]] = {}
        self.line_numbers: dict[tuple[tuple[str, Any], int | None], int] = {}
        self.text_keys: dict[tuple[str, str], tuple[str, Any]] = {}
        self.sampled: bool | None = None
        for lineno, row in iter_jsonl(self.path):
            self._add(lineno, row)
        self._check_samples()

    def _add(self, lineno: int, row: dict[str, Any]) -> None:
        where = f"{self.path}:{lineno}"
        # a free-form task's line names its "task" (or "bench", as in results.jsonl) and has
        # a string or integer id, compared as text (docs/tasks.md)
        field = "task" if "task" in row else "bench"
        item_id = row.get("id")
        for name, kind in ((field, str), ("response", str)):
            if not isinstance(row.get(name), kind):
                raise L2SError(f"{where}: field {name!r} must be a {kind.__name__}")
        if isinstance(item_id, bool) or not isinstance(item_id, (int, str)):
            raise L2SError(f"{where}: field 'id' must be a int (for a task: an int or a string)")
        sample = row.get("sample")
        if sample is not None and (not _is_count(sample)):
            raise L2SError(f"{where}: field 'sample' must be an integer >= 0, got {sample!r}")
        if self.sampled is None:
            self.sampled = sample is not None
        elif self.sampled != (sample is not None):
            raise L2SError(
                f"{where}: some lines of the file have a 'sample' and others not; number every "
                "response of a sampled log (0, 1, ...), or none"
            )
        text_key = (row[field], str(item_id))
        key = self.text_keys.setdefault(text_key, (row[field], item_id))
        if sample in self.lines.get(key, {}):
            first = self.line_numbers[(key, sample)]
            which = "" if sample is None else f" sample {sample}"
            raise L2SError(
                f"{where}: duplicate response for {key[0]} id {key[1]}{which} (line {first})"
            )
        self.lines.setdefault(key, {})[sample] = row
        self.line_numbers[(key, sample)] = lineno

    def _check_samples(self) -> None:
        """A sampled file has samples 0..n-1 of every item, the same n for all."""
        if not self.sampled:
            return
        counts: dict[int, tuple[str, Any]] = {}
        for key, rows in self.lines.items():
            if sorted(rows) != list(range(len(rows))):
                raise L2SError(
                    f"{self.where(key)}: {key[0]} id {key[1]} has samples "
                    f"{sorted(rows)}; number an item's responses 0, 1, ..., n-1"
                )
            counts.setdefault(len(rows), key)
        if len(counts) > 1:
            (n1, k1), (n2, k2) = sorted(counts.items())[:2]
            raise L2SError(
                f"{self.path}: {k1[0]} id {k1[1]} has {n1} samples, {k2[0]} id {k2[1]} has "
                f"{n2}; every item needs the same number (avg@n and pass@n are over n each)"
            )

    def keys(self) -> list[tuple[str, Any]]:
        return list(self.lines)

    def samples(self, key: tuple[str, Any]) -> list[int | None]:
        """The samples the file has of an item: [None] when it is not sampled."""
        return sorted(self.lines[self._key(key)], key=lambda s: -1 if s is None else s)

    def where(self, key: tuple[str, Any]) -> str:
        key = self._key(key)
        return f"{self.path}:{min(self.line_numbers[(key, s)] for s in self.lines[key])}"

    def _key(self, key: tuple[str, Any]) -> tuple[str, Any]:
        return key if key in self.lines else self.text_keys[(key[0], str(key[1]))]

    def _row(self, key: tuple[str, Any], sample: int) -> dict[str, Any]:
        return self.lines[self._key(key)][sample if self.sampled else None]

    def check_token_counts(self, keys: Sequence[tuple[str, Any]]) -> None:
        """Without a tokenizer, the lines of `keys` must all carry `tokens`, or none."""
        if self.tokenizer is not None:
            return
        numbered = [
            (self.line_numbers[(self._key(k), sample)], row)
            for k in keys
            for sample, row in self.lines[self._key(k)].items()
        ]
        missing = sorted(line for line, row in numbered if not _is_count(row.get("tokens")))
        if missing and len(missing) < len(numbered):
            raise L2SError(
                f"{self.path}: {len(missing)} of the {len(numbered)} responses replayed have no "
                f'"tokens" (first: line {missing[0]}); a mean length would '
                "cover only the rest. Give --tokenizer to count every response, or tokens on "
                "every line"
            )

    def generate(
        self, requests: Sequence[Request], max_tokens: int
    ) -> Iterator[tuple[int, Generation]]:
        self.check_token_counts([r.key for r in requests])
        for index, request in enumerate(requests):
            row = self._row(request.key, request.sample)
            response = row["response"]
            tokens = count_tokens(self.tokenizer, response)
            if tokens is None and _is_count(row.get("tokens")):
                tokens = row["tokens"]
            if isinstance(row.get("truncated"), bool):
                truncated = row["truncated"]
            elif "finish_reason" in row:
                truncated = row["finish_reason"] == "length"
            else:
                truncated = tokens is not None and tokens >= max_tokens
            yield index, Generation(response, tokens, truncated)

    def close(self) -> None:
        pass


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0

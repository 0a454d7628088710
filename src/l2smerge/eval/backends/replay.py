"""Responses produced elsewhere (another harness, a production log), read from JSONL lines
`{"bench": ..., "id": <0-based line number>, "response": ...}`, or for a free-form task
`{"task": ..., "id": <its id>, "response": ...}` (docs/tasks.md). Optional per line:
`"truncated": bool` or `"finish_reason": "length"`, and `"tokens": int` (used when no
tokenizer is given: then every replayed line needs it, or none may have it, so that a mean
length never covers a subset)."""

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
        self.lines: dict[tuple[str, int], dict[str, Any]] = {}
        self.line_numbers: dict[tuple[str, int], int] = {}
        self.text_keys: dict[tuple[str, str], tuple[str, Any]] = {}
        for lineno, row in iter_jsonl(self.path):
            self._add(lineno, row)

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
        key = (row[field], item_id)
        text_key = (key[0], str(item_id))
        if text_key in self.text_keys:
            first = self.line_numbers[self.text_keys[text_key]]
            raise L2SError(f"{where}: duplicate response for {key[0]} id {key[1]} (line {first})")
        self.lines[key] = row
        self.line_numbers[key] = lineno
        self.text_keys[text_key] = key

    def keys(self) -> list[tuple[str, Any]]:
        return list(self.lines)

    def where(self, key: tuple[str, Any]) -> str:
        return f"{self.path}:{self.line_numbers[key]}"

    def _row(self, key: tuple[str, Any]) -> dict[str, Any]:
        return self.lines.get(key) or self.lines[self.text_keys[(key[0], str(key[1]))]]

    def check_token_counts(self, keys: Sequence[tuple[str, Any]]) -> None:
        """Without a tokenizer, the lines of `keys` must all carry `tokens`, or none."""
        if self.tokenizer is not None:
            return
        missing = [k for k in keys if not _is_count(self._row(k).get("tokens"))]
        if missing and len(missing) < len(keys):
            raise L2SError(
                f"{self.path}: {len(missing)} of the {len(keys)} responses replayed have no "
                f'"tokens" (first: line {self.line_numbers[missing[0]]}); a mean length would '
                "cover only the rest. Give --tokenizer to count every response, or tokens on "
                "every line"
            )

    def generate(
        self, requests: Sequence[Request], max_tokens: int
    ) -> Iterator[tuple[int, Generation]]:
        self.check_token_counts([r.key for r in requests])
        for index, request in enumerate(requests):
            row = self._row(request.key)
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

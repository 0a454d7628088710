"""What every coverage judge returns: one verdict per key point, or a judge error."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from l2smerge.eval.tasks import KeyPoint

# A point's status: stated in the response; not stated; claimed by an LLM judge with evidence
# that is not in the response (not covered).
COVERED, MISSED, UNSUPPORTED = "covered", "missed", "unsupported"


@dataclass(frozen=True)
class PointVerdict:
    point: str  # the key point's text
    status: str  # COVERED, MISSED or UNSUPPORTED
    evidence: str | None = None  # what was found: a phrasing, a regex match, a quoted span

    @property
    def covered(self) -> bool:
        return self.status == COVERED

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"point": self.point, "status": self.status}
        if self.evidence is not None:
            out["evidence"] = self.evidence
        return out


@dataclass(frozen=True)
class Judgement:
    """The verdicts on one response, in key-point order; or, when the judge failed (malformed
    output after its retries, a request refused), `error` and no verdicts: never a pass."""

    verdicts: tuple[PointVerdict, ...] | None
    error: str | None = None
    requests: int = 0  # judge requests this judgement cost (0: deterministic or cached)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    input_truncated: bool = False  # only the first part of a very long response was read

    @property
    def covered(self) -> list[bool] | None:
        return None if self.verdicts is None else [v.covered for v in self.verdicts]


@dataclass(frozen=True)
class JudgeRequest:
    response: str
    key_points: tuple[KeyPoint, ...]


class Judge(Protocol):
    name: str  # "lexical", "llm"

    def info(self) -> dict[str, Any]:
        """What identifies the judge's verdicts (recorded in run.json: a run never mixes two)."""
        ...

    def judge(self, requests: Sequence[JudgeRequest]) -> Iterator[tuple[int, Judgement]]:
        """Yield (index into `requests`, judgement) as each is done, in any order."""
        ...

    def close(self) -> None: ...

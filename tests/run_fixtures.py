"""Small run directories in the exact format `l2smerge eval` writes (results.jsonl +
summary.json), for the compare/report/sweep tests."""

from __future__ import annotations

import json
from pathlib import Path

REFLECTION = "Wait, let me double-check. "


def write_run(path: Path, rows: list[dict], model: str | None = None) -> Path:
    """`rows`: dicts with at least bench, id, correct, tokens; the rest is filled in."""
    path.mkdir(parents=True, exist_ok=True)
    lines = []
    for r in rows:
        reflective = r.get("reflective", False)
        full = {
            "bench": r["bench"],
            "id": r["id"],
            "response": r.get("response", (REFLECTION if reflective else "") + "x \\boxed{1}"),
            "extracted": r.get("extracted", "1" if r["correct"] else "2"),
            "gold": r.get("gold", "1"),
            "correct": r["correct"],
            "tokens": r["tokens"],
            "truncated": r.get("truncated", False),
            "reflective": reflective,
            "reflections": 2 if reflective else 0,
            "level": r.get("level"),
        }
        lines.append(json.dumps(full))
    (path / "results.jsonl").write_text("\n".join(lines) + "\n")
    benches: dict[str, list[dict]] = {}
    for r in rows:
        benches.setdefault(r["bench"], []).append(r)
    summary = {
        "model": model or path.name,
        "benchmarks": {
            b: {
                "n": len(rs),
                "accuracy": sum(r["correct"] for r in rs) / len(rs),
                "mean_tokens": (
                    None
                    if any(r["tokens"] is None for r in rs)
                    else sum(r["tokens"] for r in rs) / len(rs)
                ),
                "reflective_ratio": sum(bool(r.get("reflective")) for r in rs) / len(rs),
            }
            for b, rs in benches.items()
        },
    }
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def paired_runs(tmp: Path, *, n: int = 200, a_only: int = 10, b_only: int = 30):
    """Two runs on `n` gsm8k items + 100 math500 items (levels 1-5) with known differences:
    gsm8k: A right on 120 items; of those B drops `a_only`; B gains `b_only` of A's misses.
    Tokens: A 1000 (+ id % 50), B exactly half of A. Reflective: A on every item, B on 1 in 4.
    math500: both right on the same 50 items; B uses 0.4x A's tokens."""
    rows_a, rows_b = [], []
    for i in range(n):
        a_right = i < 120
        b_right = (a_right and i >= a_only) or (not a_right and i < 120 + b_only)
        tok = 1000 + i % 50
        rows_a.append(
            {"bench": "gsm8k", "id": i, "correct": a_right, "tokens": tok, "reflective": True}
        )
        rows_b.append(
            {
                "bench": "gsm8k",
                "id": i,
                "correct": b_right,
                "tokens": tok // 2,
                "reflective": i % 4 == 0,
            }
        )
    for i in range(100):
        level = 1 + i % 5
        tok = 500 * level
        rows_a.append(
            {
                "bench": "math500",
                "id": i,
                "correct": i < 50,
                "tokens": tok,
                "level": level,
                "reflective": level >= 3,
            }
        )
        rows_b.append(
            {
                "bench": "math500",
                "id": i,
                "correct": i < 50,
                "tokens": int(tok * 0.4),
                "level": level,
                "reflective": level >= 5,
            }
        )
    return write_run(tmp / "system2", rows_a), write_run(tmp / "merged", rows_b)

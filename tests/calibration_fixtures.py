"""Tiny models and a calibration file shared by the calibrated-method tests."""

from __future__ import annotations

import json
from pathlib import Path

from tiny import make_tiny_model

QUESTIONS = [
    ("What is 2 + 3?", "5", "Let me add: 2 + 3. Wait, check: 3 + 2 = 5. So the answer is 5."),
    (
        "Solve x + 4 = 9.",
        "x = 5",
        "Subtract 4 from both sides: x = 9 - 4 = 5. Let me verify: 5 + 4 = 9.",
    ),
    ("How many sides has a hexagon?", "6", "A hexagon has six sides; hex means six. Answer: 6."),
    ("What is 7 * 6?", "42", "7 * 6 = 42. Double-check: 6 * 7 = 42. The answer is 42."),
]


def write_calibration(path: Path, rows=QUESTIONS) -> Path:
    lines = [
        json.dumps({"question": q, "short_answer": s, "long_answer": long}) for q, s, long in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_family(root: Path, *, children: int = 2, tie: bool = False) -> tuple[Path, list[Path]]:
    """A tiny base and `children` noisy fine-tuned stand-ins of it."""
    base = make_tiny_model(root / "base", seed=0, tie=tie)
    kids = [
        make_tiny_model(root / f"child{i}", seed=i + 1, base=base, noise=0.02 * (i + 1))
        for i in range(children)
    ]
    return base, kids

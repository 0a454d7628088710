"""The bundled lab pair: a synthetic multi-hop lookup task, its char-level tokenizer, the
training script that makes System 1 and System 2, and the trained weights (in `pair/`)."""

from pathlib import Path

PAIR_DIR = Path(__file__).parent / "pair"

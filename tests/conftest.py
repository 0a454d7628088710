from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared benchmark files: $L2SMERGE_DATA_DIR, else ../shared/benchmarks."""
    env = os.environ.get("L2SMERGE_DATA_DIR")
    path = Path(env) if env else REPO.parent / "shared" / "benchmarks"
    if not (path / "gsm8k" / "test.jsonl").exists():
        pytest.skip(f"benchmark data not found at {path} (set L2SMERGE_DATA_DIR)")
    return path

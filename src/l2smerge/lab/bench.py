"""The lab benchmark and calibration set, and writing them (with the pair) to a directory."""

from __future__ import annotations

import shutil
from pathlib import Path

from l2smerge.lab import PAIR_DIR
from l2smerge.lab.task import LEVELS, Item, long_answer, make_items, short_answer
from l2smerge.util.atomic import replace_folder, temp_dir_beside, write_jsonl_atomic
from l2smerge.util.errors import L2SError

# Seeds no training batch draws from (training uses small seeds, see train.py).
TEST_SEED = 20_250_326
CALIBRATION_SEED = 20_250_327
TEST_PER_LEVEL = 50
CALIBRATION_ITEMS = 100
PAIR_NAMES = ("system1", "system2")


def benchmark_items(per_level: int = TEST_PER_LEVEL) -> list[Item]:
    """The lab test set: `per_level` items at each level, levels interleaved."""
    return make_items(per_level * len(LEVELS), TEST_SEED)


def calibration_records(n: int = CALIBRATION_ITEMS) -> list[dict[str, str]]:
    """s1K-style calibration records: question + short (System 1) + long (System 2) answer."""
    return [
        {"question": it.question, "short_answer": short_answer(it), "long_answer": long_answer(it)}
        for it in make_items(n, CALIBRATION_SEED)
    ]


def bundled_pair() -> dict[str, Path]:
    """The trained pair shipped in the package."""
    paths = {name: PAIR_DIR / name for name in PAIR_NAMES}
    for path in paths.values():
        if not (path / "config.json").exists():
            raise L2SError(f"the bundled lab model {path} is missing; reinstall l2smerge")
    return paths


def write_benchmark(data_dir: Path, per_level: int = TEST_PER_LEVEL) -> Path:
    """Write `<data_dir>/lab/test.jsonl` (fields question, answer, level)."""
    path = data_dir / "lab" / "test.jsonl"
    write_jsonl_atomic(path, [it.to_record() for it in benchmark_items(per_level)])
    return path


def write_calibration(path: Path, n: int = CALIBRATION_ITEMS) -> Path:
    write_jsonl_atomic(path, calibration_records(n))
    return path


def copy_model_atomic(src: Path, dest: Path) -> None:
    """Copy a model directory to `dest` via a temporary sibling put in place at once."""
    tmp = temp_dir_beside(dest)
    try:
        for f in sorted(src.iterdir()):
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        replace_folder(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export(out: Path, *, force: bool = False, pair: dict[str, Path] | None = None) -> dict:
    """Write the pair, the benchmark and the calibration file under `out`."""
    pair = pair or bundled_pair()
    targets = [out / name for name in PAIR_NAMES]
    targets += [out / "benchmarks" / "lab" / "test.jsonl", out / "calibration.jsonl"]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise L2SError(f"{existing[0]} already exists; choose another directory or pass --force")
    for name in PAIR_NAMES:
        dest = out / name
        if dest.exists():
            shutil.rmtree(dest)
        copy_model_atomic(pair[name], dest)
    bench = write_benchmark(out / "benchmarks")
    calibration = write_calibration(out / "calibration.jsonl")
    return {
        "system1": out / "system1",
        "system2": out / "system2",
        "benchmark": bench,
        "calibration": calibration,
    }

"""One sweep point's work: merge it into points/<id>/model, evaluate it into points/<id>/run,
delete the model unless keep_models. `merge_and_evaluate` takes plain data so that it runs
unchanged in this process or as a Ray task (sweep_runner.py); it also evaluates the sweep's
reference and baselines (`evaluate_into`).

Resuming: a run folder with summary.json is finished and not redone; one that holds no result
is removed (so what it recorded cannot refuse the corrected rerun); a model folder without
l2smerge.json was left by an interrupted merge and is merged again.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from l2smerge.choose.sweep_spec import SweepSpec, merge_config

PROVENANCE = "l2smerge.json"


def has_results(run_dir: Path) -> bool:
    """Whether a run folder holds any graded item."""
    results = run_dir / "results.jsonl"
    return results.is_file() and results.stat().st_size > 0


def clear_failed_run(run_dir: Path) -> None:
    """Remove a run folder of this sweep that holds no result (an evaluation that failed
    before its first item: a bad model path, a backend error), so that what it recorded
    (run.json) cannot refuse the corrected rerun. A folder with results is kept: it resumes."""
    if run_dir.is_dir() and not has_results(run_dir):
        shutil.rmtree(run_dir)


def merge_and_evaluate(
    spec_data: dict[str, Any], point_key: dict[str, Any], point_dir: str, progress: bool
) -> dict[str, Any]:
    """Merge one point into point_dir/model, evaluate it into point_dir/run, delete the model
    unless keep_models. Plain-data arguments so that it runs unchanged as a Ray task."""
    from l2smerge.merge.executor import run_merge

    spec = SweepSpec.model_validate(spec_data)
    folder = Path(point_dir)
    model_dir, run_dir = folder / "model", folder / "run"
    timings = {"merge_seconds": 0.0, "eval_seconds": 0.0}
    if not (run_dir / "summary.json").is_file():
        clear_failed_run(run_dir)
        if not (model_dir / PROVENANCE).is_file():
            if model_dir.exists():  # left by an interrupted merge of this very point
                shutil.rmtree(model_dir)
            config = merge_config(spec, point_key)
            start = time.perf_counter()
            run_merge(config, model_dir, progress=progress)
            timings["merge_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        evaluate_into(spec, model_dir, run_dir, progress=progress)
        timings["eval_seconds"] = time.perf_counter() - start
    if (model_dir / PROVENANCE).is_file():  # kept beside the run: export checks against it
        shutil.copyfile(model_dir / PROVENANCE, folder / PROVENANCE)
    if not spec.keep_models and model_dir.exists():
        shutil.rmtree(model_dir)
    return {
        "run_dir": str(run_dir),
        "model_dir": str(model_dir) if model_dir.exists() else None,
        **timings,
    }


def evaluate_into(
    spec: SweepSpec, model: Path, run_dir: Path, *, progress: bool, **override: Any
) -> dict:
    """Evaluate `model` into `run_dir` with the sweep's eval settings; `override` (prompt,
    max_tokens: a reference's or baseline's own) replaces those that are not None."""
    from l2smerge.eval import evaluate

    e = spec.eval
    kwargs: dict[str, Any] = dict(
        out_dir=run_dir,
        backend=e.backend,
        data_dir=e.data_dir,
        max_tokens=e.max_tokens,
        limit=e.limit,
        prompt=e.prompt,
        batch_size=e.batch_size,
        device=e.device,
        progress=progress,
        sampling=e.sampling,
        **e.options,
    )
    if e.tasks:
        kwargs.update(tasks=e.tasks, judge=e.judge, judge_options=e.judge_options or None)
    kwargs.update({k: v for k, v in override.items() if v is not None})
    return evaluate(str(model), e.benches or None, **kwargs)

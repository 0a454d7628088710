"""`l2smerge sweep SWEEP.yaml -o DIR`: merge and evaluate every point of a sweep, find the
accuracy/length Pareto front, choose the operating point by a stated rule (selection.py) and
keep its checkpoint (ship.py).

DIR layout (every file written atomically):
    points.jsonl            one line per finished point (rewritten as each point finishes)
    pareto.json             the front: maximise macro accuracy, minimise macro mean tokens
    selection.json          the rule, its numbers and the chosen point
    reference/<label>/      the reference run (when the sweep gives a model to evaluate)
    baselines/<label>/      other runs for the report (e.g. System 1)
    points/<id>/run/        each point's run directory (results.jsonl + summary.json)
    points/<id>/model/      its merged checkpoint, deleted after evaluation unless keep_models
    points/<id>/l2smerge.json  the evaluated checkpoint's provenance (input fingerprints)
    chosen/                 the chosen point's checkpoint, recipe and model card, always kept
    report/                 l2smerge report over reference, baselines and points

Resuming: a point already in points.jsonl is skipped; a point whose run finished but was not
recorded is read back without merging again; a half-evaluated point resumes its run.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console

from l2smerge.choose.compare import compare_runs
from l2smerge.choose.coverage_report import coverage_vs_reference
from l2smerge.choose.pareto import pareto_front
from l2smerge.choose.per_group import choices_table, choose_per_group
from l2smerge.choose.report import summarise, write_report
from l2smerge.choose.selection import choose
from l2smerge.choose.ship import write_chosen
from l2smerge.choose.sweep_spec import (
    Point,
    RunSource,
    SelectionSpec,
    SweepSpec,
    expand_points,
    load_sweep,
    merge_config,
    parse_sweep,
)
from l2smerge.eval.identity import check_same_protocol
from l2smerge.eval.runs import Run, load_run
from l2smerge.util.atomic import write_json_atomic, write_jsonl_atomic
from l2smerge.util.errors import L2SError
from l2smerge.util.jsonl import read_text
from l2smerge.util.lock import holds_lock

POINTS_FILE = "points.jsonl"
PROVENANCE = "l2smerge.json"
COMPARE_RESAMPLES = 1000


# ------------------------------------------------------------------ run folders


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


def _subfolders(folder: Path) -> list[Path]:
    return [d for d in folder.iterdir() if d.is_dir()] if folder.is_dir() else []


def _first_difference(before: Any, after: Any, where: str) -> tuple[str, Any, Any]:
    """The first key path at which two sweep settings differ, e.g. ("eval.limit", 2, 3)."""
    if isinstance(before, dict) and isinstance(after, dict):
        for key in [*before, *(k for k in after if k not in before)]:
            if before.get(key) != after.get(key):
                return _first_difference(before.get(key), after.get(key), f"{where}.{key}")
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            if b != a:
                return _first_difference(b, a, f"{where}[{i}]")
    return where, before, after


# ------------------------------------------------------------------ one point (also a Ray task)


def merge_and_evaluate(
    spec_data: dict[str, Any], point_key: dict[str, Any], point_dir: str, progress: bool
) -> dict[str, Any]:
    """Merge one point into point_dir/model, evaluate it into point_dir/run, delete the model
    unless keep_models. Plain-data arguments so that it runs unchanged as a Ray task."""
    from l2smerge.eval import evaluate
    from l2smerge.merge.executor import run_merge

    spec = SweepSpec.model_validate(spec_data)
    folder = Path(point_dir)
    model_dir, run_dir = folder / "model", folder / "run"
    timings = {"merge_seconds": 0.0, "eval_seconds": 0.0}
    if not (run_dir / "summary.json").is_file():
        clear_failed_run(run_dir)
        if not (model_dir / "l2smerge.json").is_file():
            if model_dir.exists():  # left by an interrupted merge of this very point
                shutil.rmtree(model_dir)
            config = merge_config(spec, point_key)
            start = time.perf_counter()
            run_merge(config, model_dir, progress=progress)
            timings["merge_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        _evaluate(evaluate, spec, model_dir, run_dir, progress=progress)
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


def _evaluate(
    evaluate, spec: SweepSpec, model: Path, run_dir: Path, *, progress: bool, **override: Any
) -> dict:
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
        **e.options,
    )
    if e.tasks:
        kwargs.update(tasks=e.tasks, judge=e.judge, judge_options=e.judge_options or None)
    kwargs.update({k: v for k, v in override.items() if v is not None})
    return evaluate(str(model), e.benches or None, **kwargs)


def vs_reference(reference: Run, run: Run) -> dict[str, Any]:
    """What the selection rule needs about a point against the reference, on the items both
    evaluated: macro delta with its interval, per-benchmark deltas, length ratio."""
    cmp = compare_runs(reference, run, resamples=COMPARE_RESAMPLES)
    avg = cmp["average"]
    return {
        "n": avg["n"],
        "delta": avg["delta"],
        "delta_ci95": avg["delta_ci95"],
        "p_value": avg["p_value"],
        "tokens_ratio": avg["tokens_ratio"],
        "tokens_ratio_ci95": avg["tokens_ratio_ci95"],
        "reference_accuracy": avg["accuracy_a"],
        "point_accuracy": avg["accuracy_b"],
        "benchmarks": {
            b: {k: c[k] for k in ("n", "delta", "delta_ci95")} for b, c in cmp["benchmarks"].items()
        },
    }


# ------------------------------------------------------------------ the sweep


class Sweep:
    def __init__(
        self,
        spec: SweepSpec,
        out_dir: Path,
        *,
        progress: bool = True,
        ray_address: str | None = None,
        console: Console | None = None,
    ) -> None:
        self.spec = spec
        self.out = out_dir
        self.progress = progress
        self.ray_address = ray_address
        self.console = console or Console(quiet=not progress)
        self.records: dict[str, dict[str, Any]] = self._load_points()
        self.reference_run = None
        self._remote = None

    # -- files ---------------------------------------------------------------------------
    def _load_points(self) -> dict[str, dict[str, Any]]:
        path = self.out / POINTS_FILE
        records: dict[str, dict[str, Any]] = {}
        if path.is_file():
            for lineno, line in enumerate(read_text(path, "points file").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    records[record["id"]] = record
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise L2SError(f"{path}:{lineno}: not a points.jsonl record") from None
        return records

    def _save_points(self) -> None:
        write_jsonl_atomic(self.out / POINTS_FILE, self.records.values())

    def _check_same_setup(self) -> None:
        """Rerunning into DIR resumes only the same setup, so that results measured under
        other settings are never mixed into one front: base, models and merge must match
        once any point has results, eval once any run (point, reference, baseline) has. A
        sweep that failed before producing results locks nothing: its sweep.json is replaced."""
        path = self.out / "sweep.json"
        if not path.is_file():
            return
        try:
            earlier = json.loads(read_text(path, "sweep record"))
        except json.JSONDecodeError:
            raise L2SError(
                f"{path}: not valid JSON; remove it to start this sweep afresh"
            ) from None
        point_results = bool(self.records) or any(
            has_results(d / "run") for d in _subfolders(self.out / "points")
        )
        source_results = any(
            has_results(d) for f in ("reference", "baselines") for d in _subfolders(self.out / f)
        )
        keys = ["base", "models", "merge"] if point_results else []
        keys += ["eval"] if point_results or source_results else []
        now = self.spec.model_dump(mode="json")
        for key in keys:
            if key in earlier and earlier[key] != now[key]:
                where, before, after = _first_difference(earlier[key], now[key], key)
                raise L2SError(
                    f"{self.out} holds results of a sweep with {where} = {before!r}, not "
                    f"{after!r}; use another -o to keep both (points, grid, search, "
                    "selection and report may change between runs)"
                )

    # -- reference and baselines ----------------------------------------------------------
    def _source_run(self, source: RunSource, folder: str) -> Path:
        if source.run is not None:
            load_run(source.run)  # fail now, naming the file, not after hours of merging
            return source.run
        from l2smerge.eval import evaluate

        run_dir = self.out / folder / source.name
        if not (run_dir / "summary.json").is_file():
            clear_failed_run(run_dir)
            self.console.rule(f"evaluating {folder} {source.name}")
            _evaluate(
                evaluate,
                self.spec,
                source.model,
                run_dir,
                progress=self.progress,
                prompt=source.prompt,
                max_tokens=source.max_tokens,
            )
        return run_dir

    # -- points -------------------------------------------------------------------------
    def _record(self, point: Point, outcome: dict[str, Any]) -> dict[str, Any]:
        run = load_run(outcome["run_dir"], point.label)
        if self.reference_run is not None:  # no selection across prompts, stops or limits
            check_same_protocol([self.reference_run, run], "select against the reference")
        stats = summarise(run)
        if stats.average["mean_tokens"] is None:
            raise L2SError(
                f"{outcome['run_dir']}: the run has no token counts, so the sweep cannot "
                "weigh length; use a backend that counts tokens (hf, vllm, or openai with usage)"
            )
        record: dict[str, Any] = {
            "id": point.id,
            "label": point.label,
            "source": point.source,
            **point.key(),
            "run_dir": outcome["run_dir"],
            "model_dir": outcome["model_dir"],
            "accuracy": stats.average["accuracy"],
            "accuracy_ci95": stats.average["accuracy_ci95"],
            "mean_tokens": stats.average["mean_tokens"],
            "reflective_ratio": stats.average["reflective_ratio"],
            "benchmarks": {
                b: {k: g[k] for k in ("n", "accuracy", "mean_tokens", "reflective_ratio")}
                for b, g in stats.benches.items()
            },
            "vs_reference": None,
            "merge_seconds": outcome.get("merge_seconds", 0.0),
            "eval_seconds": outcome.get("eval_seconds", 0.0),
        }
        if stats.coverage is not None:  # free-form tasks (docs/tasks.md)
            record["coverage"] = stats.coverage["average"]["mean_coverage"]
            record["coverage_ci95"] = stats.coverage["average"]["coverage_ci95"]
            record["coverage_mean_tokens"] = stats.coverage["average"]["mean_tokens"]
        if self.reference_run is not None:
            record["vs_reference"] = vs_reference(self.reference_run, run)
            if stats.coverage is not None:
                record["vs_reference_coverage"] = coverage_vs_reference(self.reference_run, run)
        return record

    def _point_dir(self, point: Point) -> Path:
        return self.out / "points" / point.id

    def _finish(self, point: Point, outcome: dict[str, Any], index: int, total: int) -> dict:
        record = self._record(point, outcome)
        self.records[point.id] = record
        self._save_points()
        line = (
            f"[{index}/{total}] {point.label}: accuracy {100 * record['accuracy']:.1f}%, "
            f"{record['mean_tokens']:.0f} mean tokens"
        )
        if record["vs_reference"]:
            v = record["vs_reference"]
            lo, hi = v["delta_ci95"]
            line += f", delta {100 * v['delta']:+.1f} pts [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        line += f" [merge {record['merge_seconds']:.0f}s, eval {record['eval_seconds']:.0f}s]"
        self.console.print(line)
        return record

    def _run_local(self, point: Point) -> dict[str, Any]:
        try:
            return merge_and_evaluate(
                self.spec.model_dump(mode="json"),
                point.key(),
                str(self._point_dir(point)),
                self.progress,
            )
        except L2SError as exc:
            raise L2SError(f"sweep point {point.label}: {exc}") from exc

    def _ray_remote(self):
        if self._remote is None:
            try:
                import ray
            except ModuleNotFoundError:
                raise L2SError("--ray: Ray is not installed; pip install 'l2smerge[ray]'") from None
            if not ray.is_initialized():
                address = None if self.ray_address in (None, "local") else self.ray_address
                ray.init(address=address, include_dashboard=False, log_to_driver=self.progress)
            gpus = ray.cluster_resources().get("GPU", 0)
            options = {"num_gpus": 1} if gpus >= 1 else {"num_cpus": 1}
            self.console.print(
                f"Ray: {ray.cluster_resources().get('CPU', 0):.0f} CPUs, {gpus:.0f} GPUs; "
                f"each point gets {'one GPU' if gpus >= 1 else 'one CPU'}"
            )
            self._remote = ray.remote(**options)(merge_and_evaluate)
        return self._remote

    def _run_points(self, points: list[Point]) -> None:
        total = len(points)
        todo = [p for p in points if p.id not in self.records]
        done = total - len(todo)
        if done:
            self.console.print(f"{done} of {total} points already finished; skipping them")
        if self.ray_address is None:
            for point in todo:
                done += 1
                self.console.rule(f"[{done}/{total}] {point.label}")
                self._finish(point, self._run_local(point), done, total)
            return
        import ray

        remote = self._ray_remote()
        spec_data = self.spec.model_dump(mode="json")
        pending = {
            remote.remote(spec_data, p.key(), str(self._point_dir(p)), False): p for p in todo
        }
        self.console.print(f"submitted {len(pending)} points to Ray")
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            point = pending.pop(ready[0])
            done += 1
            try:
                outcome = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                cause = exc.as_instanceof_cause()
                if isinstance(cause, L2SError):
                    message = str(cause).strip().splitlines()[-1]
                    raise L2SError(f"sweep point {point.label}: {message}") from None
                raise
            self._finish(point, outcome, done, total)

    def _run_search(self) -> None:
        from l2smerge.choose.sweep_search import AdaptiveSearch

        search = self.spec.search
        finished = [r for r in self.records.values() if r["source"] == "search"]
        engine = AdaptiveSearch(search, finished)
        total = search.trials
        if finished:
            self.console.print(f"search: {len(finished)} of {total} trials already finished")
        while engine.remaining:
            index = total - engine.remaining + 1  # before ask(), which counts the new trial
            trial, point = engine.ask()
            if point.id in self.records:  # the sampler proposed a point we already have
                engine.tell(trial, self.records[point.id])
                continue
            self.console.rule(f"search [{index}/{total}] {point.label}")
            if self.ray_address is None:
                outcome = self._run_local(point)
            else:
                import ray

                outcome = ray.get(
                    self._ray_remote().remote(
                        self.spec.model_dump(mode="json"),
                        point.key(),
                        str(self._point_dir(point)),
                        False,
                    )
                )
            engine.tell(trial, self._finish(point, outcome, index, total))

    # -- the whole sweep -----------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_same_setup()
        write_json_atomic(self.out / "sweep.json", self.spec.model_dump(mode="json"))
        points = expand_points(self.spec)
        reference_dir = None
        if self.spec.reference is not None:
            reference_dir = self._source_run(self.spec.reference, "reference")
            self.reference_run = load_run(reference_dir, self.spec.reference.name)
        baseline_dirs = [self._source_run(b, "baselines") for b in self.spec.baselines]
        try:
            self._run_points(points)
            if self.spec.search is not None:
                self._run_search()
        finally:
            if self.ray_address is not None:
                import ray

                if ray.is_initialized():
                    ray.shutdown()
        # Points of earlier versions of the sweep file stay in points.jsonl but are left out.
        wanted = {p.id for p in points}
        records = [
            r
            for r in self.records.values()
            if r["id"] in wanted or (self.spec.search is not None and r["source"] == "search")
        ]
        if len(records) < len(self.records):
            self.console.print(
                f"{len(self.records) - len(records)} point(s) in {POINTS_FILE} are not in this "
                "sweep file; they stay recorded but are left out of the front and the selection"
            )
        if self.reference_run is not None:
            # Every point against the current reference, by the current definitions (points
            # recorded by an earlier run may have been compared to another reference).
            for r in records:
                run = load_run(r["run_dir"])
                r["vs_reference"] = vs_reference(self.reference_run, run)
                if "coverage" in r:
                    r["vs_reference_coverage"] = coverage_vs_reference(self.reference_run, run)
            self._save_points()
        metric = self._metric()
        weighed = records if metric == "accuracy" else [_on_coverage(r) for r in records]
        pareto = self._pareto(weighed, metric)
        selection = choose(
            weighed,
            rule=self.spec.selection.rule,
            margin=self.spec.selection.margin,
            benchmark_margin=self.spec.selection.benchmark_margin,
            has_reference=self.reference_run is not None,
            metric=metric,
        )
        write_json_atomic(self.out / "pareto.json", pareto)
        write_json_atomic(self.out / "selection.json", selection)
        if pareto["reference"] is not None:
            ref = pareto["reference"]
            tokens = "" if ref["mean_tokens"] is None else f", {ref['mean_tokens']:.0f} mean tokens"
            self.console.print(
                f"reference {ref['label']}: accuracy {100 * ref['accuracy']:.1f}%{tokens}"
            )
        front = {p["id"]: p["label"] for p in pareto["points"]}
        self.console.print(f"Pareto front: {', '.join(front[i] for i in pareto['front'])}")
        for line in selection["lines"]:
            self.console.print(line, highlight=False)
        if self.spec.selection.per_group:
            self._choose_per_group(records)
        chosen = next((r for r in records if r["id"] == selection["chosen"]), None)
        chosen_dir = write_chosen(
            self.out,
            self.spec,
            chosen,
            selection=selection,
            reference=pareto["reference"],
            progress=self.progress,
        )
        if chosen_dir is not None:
            self.console.print(f"chosen checkpoint: {chosen_dir}")
        result = {
            "points": records,
            "pareto": pareto,
            "selection": selection,
            "reference": None if reference_dir is None else str(reference_dir),
            "chosen": None if chosen_dir is None else str(chosen_dir),
            "report": None,
        }
        if self.spec.report and records:
            run_dirs = [r["run_dir"] for r in records]
            labels = [r["label"] for r in records]
            if reference_dir is not None:
                run_dirs.insert(0, str(reference_dir))
                labels.insert(0, self.spec.reference.name)
            for source, path in zip(self.spec.baselines, baseline_dirs, strict=True):
                run_dirs.insert(0, str(path))
                labels.insert(0, source.name)
            write_report(
                run_dirs,
                self.out / "report",
                labels=labels,
                reference=None if reference_dir is None else self.spec.reference.name,
                title="l2smerge sweep",
                notes="\n".join(
                    ["Operating point selection:", "", "```", *selection["lines"], "```"]
                ),
                chosen=None if chosen is None else chosen["label"],
            )
            result["report"] = str(self.out / "report")
            self.console.print(f"report: {self.out / 'report' / 'report.html'}")
        return result

    def _metric(self) -> str:
        """What the selection weighs: the file's choice; auto is coverage for a sweep over
        free-form tasks only."""
        metric = self.spec.selection.metric
        if metric == "auto":
            metric = (
                "coverage" if self.spec.eval.tasks and not self.spec.eval.benches else "accuracy"
            )
        return metric

    def _choose_per_group(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """A point per task group (choose/per_group.py): selection_per_group.json and the
        table of choices."""
        from rich.table import Table

        points = [
            {"id": r["id"], "label": r["label"], "records": load_run(r["run_dir"]).records}
            for r in records
        ]
        result = choose_per_group(
            self.reference_run.records, points, margin=self.spec.selection.margin
        )
        write_json_atomic(self.out / "selection_per_group.json", result)
        header, *rows = choices_table(result)
        table = Table(title=f"per group: {result['statement']}", title_justify="left")
        for name in header:
            table.add_column(name)
        for row in rows:
            table.add_row(*row)
        self.console.print(table)
        return result

    def _pareto(self, records: list[dict[str, Any]], metric: str = "accuracy") -> dict[str, Any]:
        acc = [r["accuracy"] for r in records]
        tok = [r["mean_tokens"] for r in records]
        front = {records[i]["id"] for i in pareto_front(acc, tok)} if records else set()
        reference = None
        if self.reference_run is not None:
            ref = summarise(self.reference_run)
            reference = {
                "label": self.reference_run.label,
                "accuracy": ref.average["accuracy"],
                "mean_tokens": ref.average["mean_tokens"],
            }
        if reference is not None and metric == "coverage":
            figures = summarise(self.reference_run).coverage or {"average": {}}
            reference["accuracy"] = figures["average"].get("mean_coverage")
            reference["mean_tokens"] = figures["average"].get("mean_tokens")
        return {
            "objectives": f"maximise macro {metric}, minimise macro mean tokens",
            "front": [records[i]["id"] for i in pareto_front(acc, tok)] if records else [],
            "points": [
                {
                    "id": r["id"],
                    "label": r["label"],
                    "accuracy": r["accuracy"],
                    "mean_tokens": r["mean_tokens"],
                    "on_front": r["id"] in front,
                }
                for r in sorted(records, key=lambda r: r["mean_tokens"])
            ],
            "reference": reference,
        }


def _on_coverage(record: dict[str, Any]) -> dict[str, Any]:
    """A point record as the selection rule and the front read it when they weigh key-point
    coverage: coverage in `accuracy`, coverage against the reference in `vs_reference`, tokens
    over the free-form items."""
    return {
        **record,
        "accuracy": record["coverage"],
        "accuracy_ci95": record["coverage_ci95"],
        "mean_tokens": record["coverage_mean_tokens"],
        "vs_reference": record.get("vs_reference_coverage"),
    }


@holds_lock("out_dir")  # one process per sweep folder
def run_sweep(
    spec: SweepSpec | dict[str, Any] | str | Path,
    out_dir: str | Path,
    *,
    progress: bool = True,
    ray_address: str | None = None,
    console: Console | None = None,
    margin: float | None = None,
    benchmark_margin: float | None = None,
) -> dict[str, Any]:
    """Run (or resume) a sweep. `spec`: a SweepSpec, a dict in the SWEEP.yaml format (relative
    paths from the current folder) or the path of a SWEEP.yaml. `ray_address`: None runs the
    points here one after another; "local" starts a local Ray instance; "auto" or
    "ray://host:port" joins a cluster. `margin` / `benchmark_margin` (points of accuracy)
    override the file's selection settings. Returns {"points", "pareto", "selection",
    "reference", "chosen", "report"}."""
    if isinstance(spec, (str, Path)):
        spec = load_sweep(spec)
    elif isinstance(spec, dict):
        spec = parse_sweep(spec, Path.cwd() / "sweep")
    overrides = {"margin": margin, "benchmark_margin": benchmark_margin}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        try:
            selection = SelectionSpec.model_validate({**spec.selection.model_dump(), **overrides})
        except ValidationError as exc:
            err = exc.errors()[0]
            raise L2SError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None
        spec = spec.model_copy(update={"selection": selection})
    return Sweep(
        spec, Path(out_dir), progress=progress, ray_address=ray_address, console=console
    ).run()

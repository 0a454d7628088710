"""`l2smerge sweep SWEEP.yaml -o DIR`: merge and evaluate every point of a sweep, find the
accuracy/length Pareto front, choose the operating point by a stated rule (selection.py) and
keep its checkpoint (ship.py).

The parts, each testable alone: sweep_spec.py (the file), sweep_point.py (one point's merge
and evaluation, also a Ray task), sweep_store.py (points.jsonl and sweep.json),
sweep_record.py (a finished point's figures and its comparison with the reference),
sweep_choice.py (records -> front and choice, pure), sweep_search.py (Optuna). `Sweep.run`
puts them together.

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

from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console

from l2smerge.choose.per_group import choices_table, choose_per_group
from l2smerge.choose.report import write_report
from l2smerge.choose.ship import write_chosen
from l2smerge.choose.sweep_choice import front_and_choice, selection_metric
from l2smerge.choose.sweep_point import clear_failed_run, evaluate_into, merge_and_evaluate
from l2smerge.choose.sweep_record import compare_to_reference, point_record, reference_figures
from l2smerge.choose.sweep_spec import (
    Point,
    RunSource,
    SelectionSpec,
    SweepSpec,
    expand_points,
    load_sweep,
    parse_sweep,
)
from l2smerge.choose.sweep_store import POINTS_FILE, PointStore
from l2smerge.eval.runs import Run, load_run
from l2smerge.util.atomic import write_json_atomic
from l2smerge.util.errors import L2SError
from l2smerge.util.lock import holds_lock


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
        self.store = PointStore(out_dir)
        self.reference_run: Run | None = None
        self._remote = None

    # -- the whole sweep -----------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        self.store.check_same_setup(self.spec)
        self.store.save_setup(self.spec)
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
        records = self._current_records(points)
        pareto, selection = front_and_choice(
            records,
            self.spec,
            reference_figures(self.reference_run, selection_metric(self.spec)),
        )
        write_json_atomic(self.out / "pareto.json", pareto)
        write_json_atomic(self.out / "selection.json", selection)
        self._print_choice(pareto, selection)
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
            sources = [(self.spec.reference.name, reference_dir)] if reference_dir else []
            baselines = [
                (b.name, d) for b, d in zip(self.spec.baselines, baseline_dirs, strict=True)
            ]
            report = write_sweep_report(
                self.out / "report", records, selection, chosen, sources, baselines
            )
            result["report"] = str(report)
            self.console.print(f"report: {report / 'report.html'}")
        return result

    # -- reference and baselines ----------------------------------------------------------
    def _source_run(self, source: RunSource, folder: str) -> Path:
        if source.run is not None:
            load_run(source.run)  # fail now, naming the file, not after hours of merging
            return source.run
        run_dir = self.out / folder / source.name
        if not (run_dir / "summary.json").is_file():
            clear_failed_run(run_dir)
            self.console.rule(f"evaluating {folder} {source.name}")
            evaluate_into(
                self.spec,
                source.model,
                run_dir,
                progress=self.progress,
                prompt=source.prompt,
                max_tokens=source.max_tokens,
            )
        return run_dir

    # -- points -------------------------------------------------------------------------
    def _point_dir(self, point: Point) -> Path:
        return self.out / "points" / point.id

    def _finish(self, point: Point, outcome: dict[str, Any], index: int, total: int) -> dict:
        record = point_record(point, outcome, self.reference_run)
        self.store.add(record)
        self.console.print(progress_line(record, index, total))
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
        todo = [p for p in points if p.id not in self.store]
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
        finished = [r for r in self.store if r["source"] == "search"]
        engine = AdaptiveSearch(search, finished)
        total = search.trials
        if finished:
            self.console.print(f"search: {len(finished)} of {total} trials already finished")
        while engine.remaining:
            index = total - engine.remaining + 1  # before ask(), which counts the new trial
            trial, point = engine.ask()
            if point.id in self.store:  # the sampler proposed a point we already have
                engine.tell(trial, self.store[point.id])
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

    def _current_records(self, points: list[Point]) -> list[dict[str, Any]]:
        """The records of this sweep file's points (and its search's trials), compared to the
        current reference by the current definitions. Points of earlier versions of the sweep
        file stay in points.jsonl but are left out."""
        wanted = {p.id for p in points}
        searching = self.spec.search is not None
        records = [
            r for r in self.store if r["id"] in wanted or (searching and r["source"] == "search")
        ]
        if len(records) < len(self.store):
            self.console.print(
                f"{len(self.store) - len(records)} point(s) in {POINTS_FILE} are not in this "
                "sweep file; they stay recorded but are left out of the front and the selection"
            )
        if self.reference_run is not None:
            # Points recorded by an earlier run may have been compared to another reference.
            for r in records:
                compare_to_reference(r, load_run(r["run_dir"]), self.reference_run)
            self.store.save()
        return records

    # -- the choice ---------------------------------------------------------------------
    def _print_choice(self, pareto: dict[str, Any], selection: dict[str, Any]) -> None:
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


def progress_line(record: dict[str, Any], index: int, total: int) -> str:
    """What the sweep prints when a point finishes."""
    line = (
        f"[{index}/{total}] {record['label']}: accuracy {100 * record['accuracy']:.1f}%, "
        f"{record['mean_tokens']:.0f} mean tokens"
    )
    if record["vs_reference"]:
        v = record["vs_reference"]
        lo, hi = v["delta_ci95"]
        line += f", delta {100 * v['delta']:+.1f} pts [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return line + f" [merge {record['merge_seconds']:.0f}s, eval {record['eval_seconds']:.0f}s]"


def write_sweep_report(
    folder: Path,
    records: list[dict[str, Any]],
    selection: dict[str, Any],
    chosen: dict[str, Any] | None,
    reference: list[tuple[str, Path]],
    baselines: list[tuple[str, Path]],
) -> Path:
    """`l2smerge report` over the baselines, the reference (at most one) and the points."""
    sources = [*reversed(baselines), *reference]
    run_dirs = [str(d) for _, d in sources] + [r["run_dir"] for r in records]
    labels = [name for name, _ in sources] + [r["label"] for r in records]
    write_report(
        run_dirs,
        folder,
        labels=labels,
        reference=reference[0][0] if reference else None,
        title="l2smerge sweep",
        notes="\n".join(["Operating point selection:", "", "```", *selection["lines"], "```"]),
        chosen=None if chosen is None else chosen["label"],
    )
    return folder


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

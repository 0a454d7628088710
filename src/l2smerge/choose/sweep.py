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
from rich.table import Table

from l2smerge.choose.per_group import choices_table, choose_per_group
from l2smerge.choose.report import write_report
from l2smerge.choose.ship import write_chosen
from l2smerge.choose.sweep_choice import front_and_choice, selection_metric
from l2smerge.choose.sweep_point import clear_failed_run, evaluate_into, merge_and_evaluate
from l2smerge.choose.sweep_protocol import check_reference_protocol
from l2smerge.choose.sweep_record import compare_to_reference, point_record, reference_figures
from l2smerge.choose.sweep_runner import PointRunner, make_runner
from l2smerge.choose.sweep_search import run_search
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
    """One sweep into one folder: `run` evaluates the reference and baselines, runs the
    points that are not finished, then chooses among them and writes what it chose."""

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

    def run(self) -> dict[str, Any]:
        check_reference_protocol(self.spec)  # before anything is merged or evaluated
        self.out.mkdir(parents=True, exist_ok=True)
        self.store.check_same_setup(self.spec)
        self.store.save_setup(self.spec)
        points = expand_points(self.spec)
        reference = self.spec.reference
        reference_dir = None if reference is None else self._source_run(reference, "reference")
        if reference_dir is not None:
            self.reference_run = load_run(reference_dir, reference.name)
        baselines = [(b.name, self._source_run(b, "baselines")) for b in self.spec.baselines]
        runner = make_runner(
            merge_and_evaluate,  # looked up here, so that tests may stand in for it
            self.spec.model_dump(mode="json"),
            self.out,
            ray_address=self.ray_address,
            progress=self.progress,
            console=self.console,
        )
        try:
            self._run_points(runner, points)
            if self.spec.search is not None:
                run_search(self.spec.search, self.store, runner, self._finish, self.console)
        finally:
            runner.close()
        records = self._current_records(points)
        result, chosen = self._choose(records)
        result["reference"] = None if reference_dir is None else str(reference_dir)
        if self.spec.report and records:
            runs = [*reversed(baselines)]
            runs += [] if reference_dir is None else [(reference.name, reference_dir)]
            report = write_sweep_report(
                self.out / "report", records, result["selection"], chosen, runs, reference
            )
            result["report"] = str(report)
            self.console.print(f"report: {report / 'report.html'}")
        return result

    def _source_run(self, source: RunSource, folder: str) -> Path:
        """A reference's or baseline's run directory: given, or evaluated here once."""
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

    def _finish(self, point: Point, outcome: dict[str, Any], index: int, total: int) -> dict:
        record = point_record(point, outcome, self.reference_run)
        self.store.add(record)
        self.console.print(progress_line(record, index, total))
        return record

    def _run_points(self, runner: PointRunner, points: list[Point]) -> None:
        total = len(points)
        todo = [p for p in points if p.id not in self.store]
        done = total - len(todo)
        if done:
            self.console.print(f"{done} of {total} points already finished; skipping them")
        starting = iter(range(done + 1, total + 1))

        def started(point: Point) -> None:
            self.console.rule(f"[{next(starting)}/{total}] {point.label}")

        for point, outcome in runner.run(todo, started):
            done += 1
            self._finish(point, outcome, done, total)

    def _current_records(self, points: list[Point]) -> list[dict[str, Any]]:
        """The records of this sweep file's points and search trials, compared to the current
        reference (points recorded by an earlier run may have been compared to another)."""
        records = self.store.of_sweep(points, searching=self.spec.search is not None)
        if len(records) < len(self.store):
            self.console.print(
                f"{len(self.store) - len(records)} point(s) in {POINTS_FILE} are not in this "
                "sweep file; they stay recorded but are left out of the front and the selection"
            )
        if self.reference_run is not None:
            for r in records:
                compare_to_reference(r, load_run(r["run_dir"]), self.reference_run)
            self.store.save()
        return records

    def _choose(self, records: list[dict[str, Any]]) -> tuple[dict[str, Any], dict | None]:
        """The front and the choice (pareto.json, selection.json; per group when asked), and
        the chosen point's checkpoint in chosen/. Returns (result, the chosen record)."""
        reference = reference_figures(self.reference_run, selection_metric(self.spec))
        pareto, selection = front_and_choice(records, self.spec, reference)
        write_json_atomic(self.out / "pareto.json", pareto)
        write_json_atomic(self.out / "selection.json", selection)
        for line in choice_lines(pareto, selection):
            self.console.print(line, highlight=False)
        if self.spec.selection.per_group:
            assert self.reference_run is not None  # parse_sweep: per_group needs a reference
            margin = self.spec.selection.margin
            self.console.print(choose_groups(self.out, self.reference_run, records, margin))
        chosen = next((r for r in records if r["id"] == selection["chosen"]), None)
        chosen_dir = write_chosen(
            self.out, self.spec, chosen, selection=selection, reference=reference,
            progress=self.progress,
        )  # fmt: skip
        if chosen_dir is not None:
            self.console.print(f"chosen checkpoint: {chosen_dir}")
        chosen_path = None if chosen_dir is None else str(chosen_dir)
        result = {"points": records, "pareto": pareto, "selection": selection}
        return {**result, "reference": None, "chosen": chosen_path, "report": None}, chosen


def choose_groups(out: Path, reference: Run, records: list[dict[str, Any]], margin: float) -> Table:
    """A point per task group (choose/per_group.py): selection_per_group.json, and the table
    of choices to print."""
    points = [
        {"id": r["id"], "label": r["label"], "records": load_run(r["run_dir"]).records}
        for r in records
    ]
    result = choose_per_group(reference.records, points, margin=margin)
    write_json_atomic(out / "selection_per_group.json", result)
    header, *rows = choices_table(result)
    table = Table(title=f"per group: {result['statement']}", title_justify="left")
    for name in header:
        table.add_column(name)
    for row in rows:
        table.add_row(*row)
    return table


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


def choice_lines(pareto: dict[str, Any], selection: dict[str, Any]) -> list[str]:
    """What the sweep prints about the reference, the front and the choice."""
    lines = []
    if pareto["reference"] is not None:
        ref = pareto["reference"]
        tokens = "" if ref["mean_tokens"] is None else f", {ref['mean_tokens']:.0f} mean tokens"
        lines.append(f"reference {ref['label']}: accuracy {100 * ref['accuracy']:.1f}%{tokens}")
    front = {p["id"]: p["label"] for p in pareto["points"]}
    lines.append(f"Pareto front: {', '.join(front[i] for i in pareto['front'])}")
    return lines + selection["lines"]


def write_sweep_report(
    folder: Path,
    records: list[dict[str, Any]],
    selection: dict[str, Any],
    chosen: dict[str, Any] | None,
    runs: list[tuple[str, Path]],
    reference: RunSource | None,
) -> Path:
    """`l2smerge report` over other `runs` (baselines, reference: label, run directory) and the
    points, with the selection's words and the chosen point."""
    write_report(
        [str(d) for _, d in runs] + [r["run_dir"] for r in records],
        folder,
        labels=[name for name, _ in runs] + [r["label"] for r in records],
        reference=None if reference is None else reference.name,
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

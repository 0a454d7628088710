"""Shipping a sweep's choice.

SWEEP/chosen/ always holds the chosen point's checkpoint, whatever `keep_models` says: copied
(hard links where the file system allows) from the point's model when it was kept, else
merged again from the point's recipe. `l2smerge export SWEEP [POINT] -o OUT` writes any
point's checkpoint the same way. Either gets a recipe (merge.yaml) that keeps relative the
input paths the sweep file gave as relative (rewritten against the recipe's own folder, so
`l2smerge merge OUT/merge.yaml` reruns it) and a model card with the sweep's numbers.

A rebuilt checkpoint must be the one that was evaluated: the point's l2smerge.json (kept
beside its run when its model is deleted) records the inputs' fingerprints, and a rebuild from
inputs that have changed since is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from l2smerge.choose.sweep_spec import SweepSpec, merge_config
from l2smerge.util.atomic import (
    replace_folder,
    temp_dir_beside,
    write_json_atomic,
    write_text_atomic,
)
from l2smerge.util.errors import L2SError
from l2smerge.util.lock import exclusive

CHOSEN = "chosen"
MARKER = "sweep_point.json"  # in chosen/: which point it holds
PROVENANCE = "l2smerge.json"
MODEL_CARD = "README.md"
RECIPE = "merge.yaml"


# ------------------------------------------------------------------ recipe and card


def portable_recipe(record: dict[str, Any], folder: Path, relative_inputs: list[str]) -> str:
    """The recipe of a merged model (its l2smerge.json `config`) as YAML, with the inputs the
    sweep file gave as relative paths made relative to `folder` (where merge.yaml lives:
    `l2smerge merge` takes relative recipe paths from the recipe's folder)."""
    relative = set(relative_inputs)
    folder = folder.resolve()

    def keep(path: str | None) -> str | None:
        if path is None or path not in relative:
            return path
        return os.path.relpath(path, folder)

    from l2smerge.merge.config import RUN_OPTIONS

    # the recipe only (records of older merges kept run options in it)
    data = {k: v for k, v in record["config"].items() if v is not None and k not in RUN_OPTIONS}
    data["base"] = keep(data.get("base"))
    for key in ("calibration", "tokenizer_from"):
        if key in data:
            data[key] = keep(data[key])
    models = []
    for m in data["models"]:
        path = keep(m["path"])
        models.append(path if not m.get("parameters") else {**m, "path": path})
    data["models"] = models
    return yaml.safe_dump({k: v for k, v in data.items() if v is not None}, sort_keys=False)


def evaluation_markdown(
    record: dict[str, Any], selection: dict[str, Any] | None, reference: dict[str, Any] | None
) -> str:
    """The sweep's numbers for one point, for its model card."""
    lines = [
        f"Sweep point `{record['label']}` (id `{record['id']}`), evaluated by `l2smerge "
        "sweep` on the items below (accuracy % with its 95% interval, mean response tokens):",
        "",
        "| model | benchmark | n | accuracy % | mean tokens |",
        "|---|---|---|---|---|",
    ]
    for bench, b in record["benchmarks"].items():
        lines.append(
            f"| this model | {bench} | {b['n']} | {100 * b['accuracy']:.1f} | "
            f"{b['mean_tokens']:.0f} |"
        )
    lo, hi = record["accuracy_ci95"]
    lines.append(
        f"| this model | macro average | {sum(b['n'] for b in record['benchmarks'].values())} "
        f"| {100 * record['accuracy']:.1f} ({100 * lo:.1f}–{100 * hi:.1f}) | "
        f"{record['mean_tokens']:.0f} |"
    )
    v = record.get("vs_reference")
    if v is not None:
        label = (reference or {}).get("label", "reference")
        lo, hi = v["delta_ci95"]
        change = (
            "" if v["tokens_ratio"] is None else f"; length {100 * (v['tokens_ratio'] - 1):+.1f}%"
        )
        lines += [
            "",
            f"Against `{label}` on the same {v['n']} items: accuracy "
            f"{100 * v['point_accuracy']:.1f}% vs {100 * v['reference_accuracy']:.1f}% (delta "
            f"{100 * v['delta']:+.1f} points, 95% interval [{100 * lo:+.1f}, {100 * hi:+.1f}])"
            f"{change}.",
        ]
    if selection is not None and selection.get("chosen") == record["id"]:
        lines += ["", "Chosen by the sweep's rule:", "", "```", *selection["lines"], "```"]
    return "\n".join(lines)


def finish_model_folder(
    folder: Path,
    record: dict[str, Any],
    spec: SweepSpec,
    *,
    selection: dict[str, Any] | None,
    reference: dict[str, Any] | None,
    model_path: str,
) -> None:
    """Rewrite a point's merge.yaml (portable paths) and model card (with the sweep's numbers)
    inside its model folder."""
    from l2smerge.merge.provenance import model_card

    provenance = json.loads((folder / PROVENANCE).read_text(encoding="utf-8"))
    recipe = portable_recipe(provenance, Path(model_path), spec.relative_inputs)
    write_text_atomic(folder / RECIPE, recipe)
    card = model_card(
        provenance,
        recipe,
        evaluation=evaluation_markdown(record, selection, reference),
        model_path=model_path,
    )
    write_text_atomic(folder / MODEL_CARD, card)


# ------------------------------------------------------------------ building a checkpoint


def _fingerprints(provenance: dict[str, Any]) -> dict[str, str | None]:
    return {i["role"]: i.get("fingerprint") for i in provenance.get("inputs", [])}


def build_point_model(
    spec: SweepSpec, record: dict[str, Any], point_dir: Path, dest: Path, *, progress: bool
) -> None:
    """Write the point's checkpoint to `dest` (which must not exist): a copy of the kept
    model, else a merge from its recipe, checked against the fingerprints of what was
    evaluated."""
    from l2smerge.merge.executor import run_merge

    kept = point_dir / "model"
    if (kept / PROVENANCE).is_file():
        _link_or_copy_tree(kept, dest)
        return
    run_merge(merge_config(spec, record), dest, progress=progress)
    evaluated = point_dir / PROVENANCE
    if evaluated.is_file():
        before = _fingerprints(json.loads(evaluated.read_text(encoding="utf-8")))
        after = _fingerprints(json.loads((dest / PROVENANCE).read_text(encoding="utf-8")))
        changed = [role for role, fp in before.items() if fp and after.get(role) != fp]
        if changed:
            shutil.rmtree(dest)
            raise L2SError(
                f"{point_dir}: the {', '.join(changed)} input(s) changed since point "
                f"{record['label']} was evaluated (fingerprints differ from {evaluated}); "
                "rebuilding would ship weights nobody evaluated: rerun the sweep into a new -o"
            )


def _link_or_copy_tree(source: Path, dest: Path) -> None:
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(src, dst)

    shutil.copytree(source, dest, copy_function=link)


# ------------------------------------------------------------------ chosen/ and export


def write_chosen(
    sweep_dir: Path,
    spec: SweepSpec,
    record: dict[str, Any] | None,
    *,
    selection: dict[str, Any],
    reference: dict[str, Any] | None,
    progress: bool,
) -> Path | None:
    """Keep SWEEP/chosen/ in step with the selection: the chosen point's checkpoint, recipe
    and card. Built once per chosen point (a rerun that chooses the same point only renews
    the card's numbers); removed when no point is chosen any more."""
    target = sweep_dir / CHOSEN
    if record is None:
        if target.exists():
            shutil.rmtree(target)
        return None
    marker = target / MARKER
    current = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else {}
    if current.get("id") != record["id"]:
        work = temp_dir_beside(target)
        try:
            build_point_model(
                spec, record, sweep_dir / "points" / record["id"], work / "model", progress=progress
            )
            replace_folder(work / "model", target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finish_model_folder(
        target,
        record,
        spec,
        selection=selection,
        reference=reference,
        model_path=str(target),
    )
    write_json_atomic(marker, {"id": record["id"], "label": record["label"]})  # written last
    return target


def load_sweep_dir(sweep_dir: Path) -> tuple[SweepSpec, list[dict[str, Any]], dict | None]:
    """(spec, points.jsonl records, selection.json or None) of a finished sweep folder."""
    spec_file, points_file = sweep_dir / "sweep.json", sweep_dir / "points.jsonl"
    if not spec_file.is_file() or not points_file.is_file():
        raise L2SError(
            f"{sweep_dir}: not a sweep folder with finished points (no sweep.json or "
            "points.jsonl); give the -o folder of `l2smerge sweep`"
        )
    from l2smerge.util.jsonl import iter_jsonl

    spec = SweepSpec.model_validate(json.loads(spec_file.read_text(encoding="utf-8")))
    records = [row for _, row in iter_jsonl(points_file)]
    selection_file = sweep_dir / "selection.json"
    selection = (
        json.loads(selection_file.read_text(encoding="utf-8")) if selection_file.is_file() else None
    )
    return spec, records, selection


def find_point(
    records: list[dict[str, Any]], wanted: str | None, selection: dict[str, Any] | None
) -> dict[str, Any]:
    """The record named by id, unique id prefix or label; None: the chosen point."""
    if wanted is None:
        chosen = (selection or {}).get("chosen")
        if chosen is None:
            raise L2SError(
                "the sweep chose no point; name one to export (an id or label from points.jsonl)"
            )
        wanted = chosen
    exact = [r for r in records if wanted in (r["id"], r["label"])]
    matches = exact or [r for r in records if r["id"].startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        known = ", ".join(r["label"] for r in records)
        raise L2SError(f"no point {wanted!r} in the sweep (points: {known})")
    raise L2SError(f"{wanted!r} names {len(matches)} points; give more of the id")


def export_point(
    sweep_dir: str | Path,
    point: str | None,
    out: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Write the checkpoint of one point of a finished sweep (default: the chosen one) to
    `out`, with its portable recipe and a model card carrying the sweep's numbers."""
    sweep_dir, out = Path(sweep_dir), Path(out)
    spec, records, selection = load_sweep_dir(sweep_dir)
    record = find_point(records, point, selection)
    with exclusive(out, beside=True):  # one writer per OUT, as for `l2smerge merge`
        return _export(sweep_dir, spec, record, selection, out, force=force, progress=progress)


def _export(
    sweep_dir: Path,
    spec: SweepSpec,
    record: dict[str, Any],
    selection: dict[str, Any] | None,
    out: Path,
    *,
    force: bool,
    progress: bool,
) -> Path:
    from l2smerge.merge.executor import check_replaceable

    check_replaceable(out, force=force)
    pareto_file = sweep_dir / "pareto.json"
    reference = (
        json.loads(pareto_file.read_text(encoding="utf-8")).get("reference")
        if pareto_file.is_file()
        else None
    )
    work = temp_dir_beside(out)
    try:
        build_point_model(
            spec, record, sweep_dir / "points" / record["id"], work / "model", progress=progress
        )
        finish_model_folder(
            work / "model",
            record,
            spec,
            selection=selection,
            reference=reference,
            model_path=str(out),
        )
        replace_folder(work / "model", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out

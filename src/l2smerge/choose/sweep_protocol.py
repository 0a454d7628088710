"""The sweep's protocol check before any work: a reference evaluated under another protocol
(prompt, template, stops, limit, grader, decoding, judge) than the sweep's points would be
refused when the first point is recorded, after that point was merged and evaluated. Here the
protocol the points will get is predicted from `eval:` (eval.run.planned_protocol, the code
that makes a run's identity) and compared with the reference's: a run directory's run.json,
or the protocol the sweep will evaluate a reference model with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l2smerge.choose.sweep_spec import RunSource, SweepSpec
from l2smerge.eval.identity import protocol_differences
from l2smerge.eval.runs import load_run
from l2smerge.util.errors import L2SError

POINTS_LABEL = "the sweep's points"


@dataclass
class PlannedRun:
    """A run not made yet, as protocol_differences reads runs."""

    label: str
    protocol: dict[str, Any]


def planned_eval_protocol(
    spec: SweepSpec, *, model: Path | None = None, source: RunSource | None = None
) -> dict[str, Any]:
    """The protocol `l2smerge eval` will record for a point (`model` None: rendered with the
    tokenizer merges get, the merge's tokenizer_from, base or first model) or for a
    reference/baseline model `source` (with its prompt / max_tokens overrides)."""
    from l2smerge.eval.run import planned_protocol

    e = spec.eval
    tokenizer = e.options.get("tokenizer")
    if tokenizer is None and e.backend != "openai":
        tokenizer = model or spec.merge.get("tokenizer_from") or spec.base or spec.models[0]
    prompt = source.prompt if source is not None and source.prompt is not None else e.prompt
    limit = e.max_tokens
    if source is not None and source.max_tokens is not None:
        limit = source.max_tokens
    try:
        return planned_protocol(
            e.benches or None,
            backend=e.backend,
            prompt=prompt,
            max_tokens=limit,
            sampling=e.sampling,
            tasks=e.tasks,
            judge=e.judge,
            judge_options=e.judge_options or None,
            tokenizer=tokenizer,
        )
    except L2SError as exc:
        raise L2SError(f"sweep eval: {exc}") from None


def check_reference_protocol(spec: SweepSpec) -> None:
    """Refuse, before anything is merged or evaluated, a reference that the sweep's points
    could not be selected against (an unknown value, e.g. a replayed run's prompt, is not a
    difference)."""
    source = spec.reference
    if source is None:
        return
    points = PlannedRun(POINTS_LABEL, planned_eval_protocol(spec))
    if source.run is not None:
        reference: Any = load_run(source.run, source.name)
        how = f"the run {source.run} was evaluated"
        fix = "set eval: to its protocol, or give the reference as {model: ...}"
    else:
        planned = planned_eval_protocol(spec, model=source.model, source=source)
        reference = PlannedRun(source.name, planned)
        how = f"the reference model {source.model} would be evaluated"
        fix = "drop the reference's prompt/max_tokens overrides or make eval: match them"
    differences = protocol_differences(reference, points)
    if differences:
        raise L2SError(
            f"cannot select against the reference {source.name}: {how} differently from the "
            f"sweep's points ({'; '.join(differences)}); nothing was merged or evaluated. "
            f"To select against it, {fix}"
        )

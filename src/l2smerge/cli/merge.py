"""`l2smerge merge`: merge checkpoints from options or from a YAML merge config."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

from l2smerge.cli import app
from l2smerge.util.errors import L2SError


def _number_list(option: str, text: str | None) -> float | list[float] | None:
    """'0.7' -> 0.7; '0.7,0.3' -> [0.7, 0.3] (one value per --model)."""
    if text is None:
        return None
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise L2SError(f"{option} {text!r}: expected a number or a comma list of numbers") from None
    return values[0] if len(values) == 1 else values


def parse_params(texts: list[str] | None) -> dict[str, object]:
    """Repeatable `--param NAME=VALUE`: any parameter of the method, VALUE read as YAML (as in
    a merge config): a number, true/false or text; a list gives one value per --model; a
    mapping gives name rules."""
    from l2smerge.util.yamlfile import load_yaml_text

    params: dict[str, object] = {}
    for text in texts or []:
        name, sep, value = text.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name.isidentifier():
            raise L2SError(f"--param {text!r}: expected NAME=VALUE, e.g. --param alpha=0.7")
        if name in params:
            raise L2SError(f"--param {name}: given twice")
        params[name] = load_yaml_text(value, f"--param {name}")
    return params


def _model_index(key: str, models: list[Path]) -> int | None:
    """Which --model `key` names: the path as given, the same folder, or its folder name."""
    for i, m in enumerate(models):
        if key == str(m) or Path(key).resolve() == m.resolve():
            return i
    named = [i for i, m in enumerate(models) if m.name == key]
    return named[0] if len(named) == 1 else None


def per_model_values(
    option: str, values: list[str] | None, models: list[Path], *, is_file: bool
) -> tuple[str | None, dict[int, str]]:
    """Repeatable `--option VALUE` / `--option MODEL=VALUE`: (the value for every model, or
    None; {model index: its own value}). MODEL is a --model path as given, the same folder,
    or its folder name. A VALUE that is an existing file is never split at '='."""
    shared: str | None = None
    own: dict[int, str] = {}
    for text in values or []:
        key, sep, value = text.partition("=")
        index = _model_index(key, models) if sep else None
        if index is None and sep and not (is_file and Path(text).exists()):
            known = ", ".join(str(m) for m in models) or "none given"
            raise L2SError(
                f"{option} {text!r}: {key!r} is not one of the --model inputs ({known}); "
                f"use {option} VALUE for every model or {option} MODEL=VALUE for one"
            )
        if index is None:
            if shared is not None:
                raise L2SError(f"{option}: given twice for every model ({shared!r}, {text!r})")
            shared = text
        else:
            if index in own:
                raise L2SError(f"{option}: given twice for --model {models[index]}")
            own[index] = value
    return shared, own


def _sigterm_to_exit(signum, frame):  # noqa: ARG001
    raise SystemExit(128 + signum)  # lets the merge remove its temporary folder


def _write_mergekit(config, dest: Path) -> None:
    from l2smerge.merge.mergekit import to_mergekit
    from l2smerge.util.atomic import write_text_atomic

    text, notes = to_mergekit(config)
    if str(dest) == "-":
        typer.echo(text, nl=False)
        return
    write_text_atomic(dest, text)
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"mergekit recipe written to {dest}")


@app.command("merge")
def merge(
    config_file: Annotated[
        Optional[Path],  # noqa: UP045 (typer reads this at runtime)
        typer.Argument(metavar="[CONFIG.yaml]", help="A YAML merge config (instead of options)."),
    ] = None,
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("-o", "--out", help="Output model folder."),
    ] = None,
    base: Annotated[Optional[Path], typer.Option(help="Base model (θ0).")] = None,  # noqa: UP045
    model: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Option("--model", "-m", help="A model to merge (repeat for several)."),
    ] = None,
    method: Annotated[Optional[str], typer.Option(help="Merge method.")] = None,  # noqa: UP045
    on: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Inner method for a wrapping method (aim --on ties)."),
    ] = None,
    alpha: Annotated[
        Optional[str], typer.Option(help="Weight α: one value, or one per --model (0.7,0.3).")  # noqa: UP045
    ] = None,
    density: Annotated[
        Optional[str], typer.Option(help="Fraction of each task vector kept (TIES k=0.8 → 0.2).")  # noqa: UP045
    ] = None,
    drop_rate: Annotated[
        Optional[str], typer.Option(help="DARE drop probability p, in [0, 1).")  # noqa: UP045
    ] = None,
    omega: Annotated[Optional[float], typer.Option(help="AIM ω.")] = None,  # noqa: UP045
    relax_head_and_norms: Annotated[
        bool,
        typer.Option(
            "--relax-head-and-norms",
            help="AIM: also relax lm_head and the norms (AIM's reference code does).",
        ),
    ] = False,
    temperature: Annotated[Optional[float], typer.Option(help="Sens softmax T.")] = None,  # noqa: UP045
    rank: Annotated[Optional[int], typer.Option(help="SVD rank (LoRE, Twin).")] = None,  # noqa: UP045
    calibration: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            metavar="[MODEL=]FILE",
            help="Calibration data (AIM, Sens): FILE for every model, or MODEL=FILE for one "
            "--model (Sens; repeat).",
        ),
    ] = None,
    calibration_fields: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            metavar="[MODEL=]FIELDS",
            help="Calibration fields, e.g. question,short_answer: for every model, or "
            "MODEL=FIELDS for one --model (Sens; repeat).",
        ),
    ] = None,
    preset: Annotated[
        Optional[str], typer.Option(help="The study's settings, e.g. ties@7b.")  # noqa: UP045
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for random methods (DARE).")] = None,  # noqa: UP045
    dtype: Annotated[
        Optional[str], typer.Option(help="bfloat16|float16|float32 (default: the base's).")  # noqa: UP045
    ] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu|cuda: where the math runs.")] = None,  # noqa: UP045
    tokenizer_from: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Input whose tokenizer, config and extra vocab rows the output gets."),
    ] = None,
    max_shard_size: Annotated[
        Optional[str], typer.Option(help="Largest output shard, e.g. 5GB.")  # noqa: UP045
    ] = None,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Accept *.bin checkpoints (weights_only).")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
    param: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--param",
            metavar="NAME=VALUE",
            help="Any parameter of the method (l2smerge methods lists them), e.g. "
            "--param tie_break=mergekit; VALUE as in YAML: [0.7, 0.3] gives one value per "
            "--model. Repeat for several.",
        ),
    ] = None,
    to_mergekit: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--to-mergekit",
            metavar="FILE",
            help="Write this merge as a mergekit YAML to FILE ('-': stdout) instead of merging.",
        ),
    ] = None,
) -> None:
    """Merge a base and one or more models into one checkpoint (or run CONFIG.yaml)."""
    from l2smerge.merge.config import MergeConfig
    from l2smerge.merge.executor import run_merge

    named = {
        "alpha": _number_list("--alpha", alpha),
        "density": _number_list("--density", density),
        "drop_rate": _number_list("--drop-rate", drop_rate),
        "omega": omega,
        "relax_head_and_norms": True if relax_head_and_norms else None,
        "temperature": temperature,
        "rank": rank,
    }
    named = {k: v for k, v in named.items() if v is not None}
    extra = parse_params(param)
    both = sorted(set(named) & set(extra))
    if both:
        raise L2SError(f"--{both[0].replace('_', '-')} and --param {both[0]}: give it once")
    parameters = {**named, **extra}
    fields = dict(on=on, seed=seed, dtype=dtype, tokenizer_from=tokenizer_from)
    # run options: beside a config file too, where they override the file's
    run_options = dict(
        device=device, max_shard_size=max_shard_size, allow_pickle=allow_pickle or None
    )
    if config_file is not None:
        given = [
            k
            for k, v in {
                **parameters,
                **fields,
                "base": base,
                "model": model,
                "method": method,
                "preset": preset,
                "calibration": calibration,
                "calibration_fields": calibration_fields,
            }.items()
            if v
        ]
        if given:
            raise L2SError(
                f"{config_file}: give either a config file or options, not both "
                f"(also got --{given[0].replace('_', '-')})"
            )
        config = MergeConfig.from_yaml(config_file).with_options(**run_options)
    else:
        if not model:
            raise L2SError("no models: pass --model PATH (repeat for several) or a CONFIG.yaml")
        models = list(model)
        shared_calibration, own_calibration = per_model_values(
            "--calibration", calibration, models, is_file=True
        )
        shared_fields, own_fields = per_model_values(
            "--calibration-fields", calibration_fields, models, is_file=False
        )
        if calibration_fields:
            if "calibration_fields" in parameters:
                raise L2SError("--calibration-fields and --param calibration_fields: give it once")
            parameters["calibration_fields"] = (
                [own_fields.get(i, shared_fields) for i in range(len(models))]
                if own_fields
                else shared_fields
            )
        config = MergeConfig.build(
            method=method,
            models=models,
            base=base,
            parameters=parameters,
            preset=preset,
            calibration=shared_calibration,
            model_calibration=(
                [own_calibration.get(i) for i in range(len(models))] if own_calibration else None
            ),
            **fields,
            **run_options,
        )
    if config.mergekit_notes is not None:
        err = str(to_mergekit) == "-"  # keep stdout for the YAML asked for
        typer.echo(f"{config_file}: a mergekit recipe, read as this l2smerge recipe:", err=err)
        typer.echo(config.to_yaml().rstrip(), err=err)
        for note in config.mergekit_notes:
            typer.echo(f"note: {note}", err=err)
    if to_mergekit is not None:
        _write_mergekit(config, to_mergekit)
        return
    if out is None:
        raise L2SError("no output: pass -o OUT (or --to-mergekit FILE to write mergekit YAML)")
    signal.signal(signal.SIGTERM, _sigterm_to_exit)
    result = run_merge(config, out, progress=not no_progress, force=force)
    typer.echo(f"merged model written to {result}")

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


def _sigterm_to_exit(signum, frame):  # noqa: ARG001
    raise SystemExit(128 + signum)  # lets the merge remove its temporary folder


@app.command("merge")
def merge(
    config_file: Annotated[
        Optional[Path],  # noqa: UP045 (typer reads this at runtime)
        typer.Argument(metavar="[CONFIG.yaml]", help="A YAML merge config (instead of options)."),
    ] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="Output model folder.")] = ...,  # type: ignore[assignment]
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
    temperature: Annotated[Optional[float], typer.Option(help="Sens softmax T.")] = None,  # noqa: UP045
    rank: Annotated[Optional[int], typer.Option(help="SVD rank (LoRE, Twin).")] = None,  # noqa: UP045
    calibration: Annotated[
        Optional[Path], typer.Option(help="Calibration data (AIM, Sens).")  # noqa: UP045
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
) -> None:
    """Merge a base and one or more models into one checkpoint (or run CONFIG.yaml)."""
    from l2smerge.merge.config import MergeConfig
    from l2smerge.merge.executor import run_merge

    parameters = {
        "alpha": _number_list("--alpha", alpha),
        "density": _number_list("--density", density),
        "drop_rate": _number_list("--drop-rate", drop_rate),
        "omega": omega,
        "temperature": temperature,
        "rank": rank,
    }
    fields = dict(
        on=on,
        calibration=calibration,
        seed=seed,
        dtype=dtype,
        device=device,
        tokenizer_from=tokenizer_from,
        max_shard_size=max_shard_size,
        allow_pickle=allow_pickle or None,
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
            }.items()
            if v
        ]
        if given:
            raise L2SError(
                f"{config_file}: give either a config file or options, not both "
                f"(also got --{given[0].replace('_', '-')})"
            )
        config = MergeConfig.from_yaml(config_file)
    else:
        if not model:
            raise L2SError("no models: pass --model PATH (repeat for several) or a CONFIG.yaml")
        config = MergeConfig.build(
            method=method,
            models=list(model),
            base=base,
            parameters=parameters,
            preset=preset,
            **fields,
        )
    signal.signal(signal.SIGTERM, _sigterm_to_exit)
    result = run_merge(config, out, progress=not no_progress, force=force)
    typer.echo(f"merged model written to {result}")

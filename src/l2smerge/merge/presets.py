"""The study's settings (Wu et al. 2025, arXiv 2503.20641) per method and model scale.

`--preset ties@7b` sets the method and its parameters; explicit options override them.
The study's TIES k is the fraction of a task vector *removed*, so density = 1 − k; its DARE p
is the drop rate. docs/methods.md gives the mapping.
"""

from __future__ import annotations

from typing import Any

from l2smerge.util.errors import L2SError


def _p(method: str, on: str | None = None, **parameters: float) -> dict[str, Any]:
    return {"method": method, "on": on, "parameters": parameters}


PRESETS: dict[str, dict[str, Any]] = {
    # Average of the System 1 and System 2 models (no parameters).
    **{f"average@{s}": _p("average") for s in ("1.5b", "7b", "14b", "32b")},
    # Task arithmetic: alpha 0.7 at every scale.
    **{
        f"task_arithmetic@{s}": _p("task_arithmetic", alpha=0.7)
        for s in ("1.5b", "7b", "14b", "32b")
    },
    # TIES: k = 0.8, alpha 1.0 (1.5B, 7B); k = 0.2, alpha 0.5 (14B); k = 0.25, alpha 0.55 (32B).
    "ties@1.5b": _p("ties", density=0.2, alpha=1.0),
    "ties@7b": _p("ties", density=0.2, alpha=1.0),
    "ties@14b": _p("ties", density=0.8, alpha=0.5),
    "ties@32b": _p("ties", density=0.75, alpha=0.55),
    # DARE: p = 0.3 (0.4 at 14B). The study's script (src/main_merging.py, mask_merging)
    # drops, rescales, then applies --mask_apply_method with the same --scaling_coefficient
    # and --param_value_mask_rate (TIES k, default 0.8) as a plain run, so:
    # "DARE" row = DARE then the average of System 1 and System 2: θ0 + ½·drop(δ), i.e.
    # dare_ta with alpha 0.5 (System 1's task vector is zero, so listing it changes nothing);
    # DARE-TA = DARE then task arithmetic at TA's alpha 0.7;
    # DARE-TIES = DARE then TIES at the scale's TIES settings, trim included.
    **{f"dare@{s}": _p("dare_ta", drop_rate=0.3, alpha=0.5) for s in ("1.5b", "7b")},
    "dare@14b": _p("dare_ta", drop_rate=0.4, alpha=0.5),
    "dare_ta@1.5b": _p("dare_ta", drop_rate=0.3, alpha=0.7),
    "dare_ta@7b": _p("dare_ta", drop_rate=0.3, alpha=0.7),
    "dare_ta@14b": _p("dare_ta", drop_rate=0.4, alpha=0.7),
    "dare_ties@1.5b": _p("dare_ties", drop_rate=0.3, density=0.2, alpha=1.0),
    "dare_ties@7b": _p("dare_ties", drop_rate=0.3, density=0.2, alpha=1.0),
    "dare_ties@14b": _p("dare_ties", drop_rate=0.4, density=0.8, alpha=0.5),
    # AIM on top of TIES, omega 0.4, TIES at the scale's settings.
    "aim_ties@1.5b": _p("aim", on="ties", omega=0.4, density=0.2, alpha=1.0),
    "aim_ties@7b": _p("aim", on="ties", omega=0.4, density=0.2, alpha=1.0),
    "aim_ties@14b": _p("aim", on="ties", omega=0.4, density=0.8, alpha=0.5),
    # Sens-Merging: alpha and softmax temperature T per scale.
    "sens@1.5b": _p("sens", alpha=0.4, temperature=3.0),
    "sens@7b": _p("sens", alpha=0.7, temperature=2.0),
    "sens@14b": _p("sens", alpha=0.8, temperature=6.0),
}


def get_preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        known = ", ".join(sorted(PRESETS))
        raise L2SError(f"unknown preset {name!r}; known presets: {known}")
    spec = PRESETS[name]
    return {"method": spec["method"], "on": spec["on"], "parameters": dict(spec["parameters"])}


def apply_preset(
    name: str,
    *,
    method: str | None = None,
    on: str | None = None,
    parameters: dict[str, Any] | None = None,
    words: tuple[str, str] = ("method", "preset"),
) -> tuple[str, str | None, dict[str, Any]]:
    """(method, inner method, parameters) of the preset `name` with what is given over it:
    the given parameters override the preset's, a given inner method its inner method. A
    given method other than the preset's is an error; `words` name the method and the preset
    in it as the user wrote them (("--method", "--preset") on the command line)."""
    spec = get_preset(name)
    if method is not None and method != spec["method"]:
        raise L2SError(
            f"{words[0]} {method} conflicts with {words[1]} {name!r} (which is "
            f"{spec['method']}); drop one of them"
        )
    return spec["method"], on or spec["on"], {**spec["parameters"], **(parameters or {})}

"""`l2smerge methods`: the merge methods and the study's presets."""

from __future__ import annotations

from l2smerge.cli import app


@app.command("methods")
def methods_command() -> None:
    """List the merge methods (parameters and defaults) and the presets with the study's
    settings (docs/methods.md has every formula)."""
    from rich.console import Console
    from rich.table import Table

    from l2smerge.merge.presets import PRESETS
    from l2smerge.methods import METHODS, WRAPPERS
    from l2smerge.methods.registry import plain_methods

    console = Console()
    methods = Table(title="merge methods (--method NAME)")
    for column in ("method", "base", "parameters (default)", "what it does"):
        methods.add_column(column, overflow="fold")
    for name in sorted(plain_methods()):
        method = METHODS[name]
        base = "needed" if method.needs_base else "optional" if method.optional_base else "—"
        params = ", ".join(f"{p}={d}" for p, d in method.params.items()) or "—"
        methods.add_row(name, base, params, method.summary)
    for wrapper in WRAPPERS.values():
        method = METHODS[wrapper.name]
        own = {p: d for p, d in method.params.items() if p not in METHODS[method.inner].params}
        params = ", ".join(f"{p}={d}" for p, d in own.items()) + ", and the inner method's"
        forms = f"{wrapper.name}, {wrapper.name}_<method>, {wrapper.name} --on <method>"
        summary = f"{wrapper.summary} Bare {wrapper.name} is {wrapper.name}_{method.inner}."
        methods.add_row(forms, "needed", params, summary)
    presets = Table(title="presets (--preset NAME): the study's settings, Wu et al. 2025")
    for column in ("preset", "method", "parameters"):
        presets.add_column(column, overflow="fold")
    for name, spec in PRESETS.items():
        method = spec["method"] + (f" --on {spec['on']}" if spec["on"] else "")
        params = ", ".join(f"{p}={v:g}" for p, v in spec["parameters"].items()) or "—"
        presets.add_row(name, method, params)
    console.print(methods)
    console.print(presets)

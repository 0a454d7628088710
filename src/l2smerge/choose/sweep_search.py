"""Adaptive search over continuous merge parameters with Optuna (optional: `pip install
'l2smerge[optuna]'`).

Two objectives, macro accuracy (maximise) and macro mean tokens (minimise), so the
multi-objective TPE sampler spends its trials near the accuracy/length front rather than on a
single trade-off. Finished trials are read back from points.jsonl on a rerun, so a resumed
search continues from where it stopped instead of starting over.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console

from l2smerge.choose.sweep_spec import Point, SearchSpec
from l2smerge.util.errors import L2SError

if TYPE_CHECKING:
    from l2smerge.choose.sweep_runner import PointRunner
    from l2smerge.choose.sweep_store import PointStore

# finish(point, outcome, index, total) -> the point's record, recorded in the store
Finish = Callable[[Point, dict[str, Any], int, int], dict[str, Any]]


def run_search(
    spec: SearchSpec, store: PointStore, runner: PointRunner, finish: Finish, console: Console
) -> None:
    """Run the search's trials that are not finished, one at a time (each proposal depends on
    the results before it), through the sweep's runner."""
    finished = [r for r in store if r["source"] == "search"]
    engine = AdaptiveSearch(spec, finished)
    total = spec.trials
    if finished:
        console.print(f"search: {len(finished)} of {total} trials already finished")
    while engine.remaining:
        index = total - engine.remaining + 1  # before ask(), which counts the new trial
        trial, point = engine.ask()
        if point.id in store:  # the sampler proposed a point we already have
            engine.tell(trial, store[point.id])
            continue
        console.rule(f"search [{index}/{total}] {point.label}")
        [(_, outcome)] = runner.run([point])
        engine.tell(trial, finish(point, outcome, index, total))


class AdaptiveSearch:
    def __init__(self, spec: SearchSpec, finished: list[dict[str, Any]]) -> None:
        try:
            import optuna
        except ModuleNotFoundError:
            raise L2SError(
                "search: adaptive search needs Optuna; pip install 'l2smerge[optuna]' "
                "(or remove the search: key)"
            ) from None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.spec = spec
        self.distributions = {
            name: optuna.distributions.FloatDistribution(low, high)
            for name, (low, high) in spec.params.items()
        }
        sampler = optuna.samplers.TPESampler(
            seed=spec.seed,
            n_startup_trials=max(2, min(10, spec.trials // 3)),
            multivariate=True,
        )
        self.study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        for record in finished:
            params = {k: record["parameters"].get(k) for k in self.distributions}
            inside = all(
                record["method"] == spec.method
                and isinstance(v, (int, float))
                and spec.params[k][0] <= v <= spec.params[k][1]
                for k, v in params.items()
            )
            if not inside:  # a trial of an earlier search over other ranges: not this study's
                continue
            self.study.add_trial(
                optuna.trial.create_trial(
                    params=params,
                    distributions=self.distributions,
                    values=[record["accuracy"], record["mean_tokens"]],
                )
            )

    @property
    def remaining(self) -> int:
        return max(0, self.spec.trials - len(self.study.trials))

    def ask(self) -> tuple[Any, Point]:
        for name, (low, high) in self.spec.params.items():
            if not low < high:
                raise L2SError(f"search.params.{name}: need low < high, got [{low}, {high}]")
        trial = self.study.ask(self.distributions)
        params = {
            name: round(trial.params[name], self.spec.decimals) for name in self.distributions
        }
        point = Point(
            self.spec.method, {**self.spec.fixed, **params}, on=self.spec.on, source="search"
        )
        return trial, point

    def tell(self, trial: Any, record: dict[str, Any]) -> None:
        self.study.tell(trial, [record["accuracy"], record["mean_tokens"]])

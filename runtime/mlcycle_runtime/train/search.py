"""Hyper-parameter search with Ray Tune: the spec's search space, algorithm and scheduler, and its progress."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlcycle_runtime.config import SearchDimension, Tuning

# The searchers Ray Tune wraps for each model-based algorithm, and the package each needs.
MODEL_BASED = {"optuna": ("optuna", "ray.tune.search.optuna", "OptunaSearch"),
               "hyperopt": ("hyperopt", "ray.tune.search.hyperopt", "HyperOptSearch")}


class SearchError(Exception):
    """A tuning spec that cannot be searched; the message names the field."""


def parse_value(value: Any) -> Any:
    """Candidate values arrive as strings (the CRD keeps them visible to CEL): JSON first, else the string."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def dimension(name: str, dim: SearchDimension, *, as_grid: bool = False) -> Any:
    """One search dimension as a Tune domain (or grid); `as_grid` turns a choice into a grid."""
    from ray import tune

    where = f"tuning.searchSpace.{name}"
    if dim.type in ("choice", "grid"):
        if not dim.values:
            raise SearchError(f"{where}: {dim.type} needs values")
        values = [parse_value(v) for v in dim.values]
        return tune.grid_search(values) if dim.type == "grid" or as_grid else tune.choice(values)
    if dim.lower is None or dim.upper is None:
        raise SearchError(f"{where}: {dim.type} needs lower and upper")
    if dim.lower >= dim.upper:
        raise SearchError(f"{where}: lower {dim.lower} must be below upper {dim.upper}")
    if as_grid:
        raise SearchError(f"{where}: grid search needs discrete values, but {name} is {dim.type}; "
                          "use type grid or choice")
    if dim.type == "uniform":
        return tune.uniform(dim.lower, dim.upper)
    if dim.type == "loguniform":
        if dim.lower <= 0:
            raise SearchError(f"{where}: loguniform needs lower > 0")
        return tune.loguniform(dim.lower, dim.upper)
    return tune.randint(math.ceil(dim.lower), math.ceil(dim.upper))  # upper exclusive, as the CRD says


@dataclass
class Plan:
    """What Tune runs: the param space, the searcher (None: Tune's random/grid variant generator), trials, and how
    many run at once (a model-based searcher carries its own limit, so Tune must not be given a second one)."""

    space: dict[str, Any]
    search_alg: Any
    num_samples: int
    total: int
    max_concurrent: int = 1

    def tune_max_concurrent(self) -> int | None:
        """The value for TuneConfig.max_concurrent_trials: None when the searcher already limits concurrency."""
        return None if self.search_alg is not None else self.max_concurrent


def plan(tuning: Tuning | None, metric: str, mode: str, at_most: int | None = None) -> Plan:
    """Translate the spec's tuning section; a job without one is a single trial of the fixed params. `at_most`
    caps the trials at once below maxConcurrentTrials (what the Ray cluster holds)."""
    if tuning is None or not tuning.search_space:
        return Plan({}, None, 1, 1)
    algorithm, concurrent = tuning.algorithm, min(tuning.max_concurrent_trials, at_most or tuning.max_concurrent_trials)
    grid = algorithm == "grid"
    space = {name: dimension(name, dim, as_grid=grid) for name, dim in tuning.search_space.items()}
    grid_size = math.prod(len(dim.values) for name, dim in tuning.search_space.items()
                          if dim.type == "grid" or grid)
    if grid:
        # Every grid point once: the grid is the plan, numSamples does not multiply it.
        return Plan(space, None, 1, grid_size, concurrent)
    if algorithm == "random":
        return Plan(space, None, tuning.num_samples, tuning.num_samples * grid_size, concurrent)
    package, module, cls = MODEL_BASED[algorithm]
    if importlib.util.find_spec(package) is None:
        raise SearchError(f"tuning.algorithm {algorithm}: the {package} package is not installed in this image; "
                          "use random or grid, or a runtime image with it")
    if any(dim.type == "grid" for dim in tuning.search_space.values()):
        raise SearchError(f"tuning.algorithm {algorithm} cannot search grid dimensions; use choice")
    from ray.tune.search import ConcurrencyLimiter

    searcher = getattr(importlib.import_module(module), cls)(metric=metric, mode=mode)
    if package == "optuna":
        # Optuna logs every trial it is told about; the trainer prints its own progress line per trial.
        importlib.import_module("optuna").logging.set_verbosity(logging.WARNING)
    # A model-based searcher suggests from the results so far: trials started together learn nothing from each
    # other, so the limit is part of the search (Tune's own wrapper would do the same, less visibly).
    limited = ConcurrencyLimiter(searcher, max_concurrent=concurrent)
    return Plan(space, limited, tuning.num_samples, tuning.num_samples, concurrent)


def scheduler(tuning: Tuning | None, max_rounds: int) -> Any:
    """ASHA on boosting rounds when there is something to stop early; else first-in-first-out."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if tuning is None or tuning.scheduler.type != "asha" or max_rounds <= 1:
        return FIFOScheduler()
    spec = tuning.scheduler
    return ASHAScheduler(time_attr="training_iteration", max_t=max_rounds,
                         grace_period=min(spec.grace_period, max_rounds), reduction_factor=spec.reduction_factor)


def max_rounds(tuning: Tuning | None, fixed_rounds: int) -> int:
    """The most boosting rounds any trial can run (a searched round count counts at its upper bound)."""
    best = fixed_rounds
    for name, dim in (tuning.search_space.items() if tuning else ()):
        if name in ("num_boost_round", "n_estimators"):
            values = [parse_value(v) for v in dim.values] or [dim.upper or 0]
            best = max([best, *(int(v) for v in values)])
    return best


_METRIC_KEYS = frozenset({"roc_auc", "pr_auc", "log_loss", "accuracy", "f1", "f1_macro", "rmse", "mae", "r2",
                          "rounds"})


def _better(a: float, b: float | None, mode: str) -> bool:
    return b is None or (a > b if mode == "max" else a < b)


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in config.items()}


@dataclass
class TrialBest:
    value: float
    config: dict[str, Any]
    metrics: dict[str, float]


@dataclass
class Progress:
    """Trials as they finish: the best configuration so far, printed and handed to `on_change` (throttled); while
    trials run, their latest round is printed every `round_interval_s`. A trial that failed does not count
    towards the best: its last results are those of a fit cut short (a pod lost, a worker out of memory)."""

    total: int
    metric: str
    mode: str
    on_change: Callable[[dict[str, Any]], None] = lambda _: None
    interval_s: float = 2.0
    max_rounds: int | None = None  # a trial that finished below this was stopped early by the scheduler
    finished: int = 0
    stopped_early: int = 0
    errors: list[str] = field(default_factory=list)
    error_texts: list[str] = field(default_factory=list)  # each error's whole text: where it happened, why
    per_trial: dict[str, TrialBest] = field(default_factory=dict)
    last_round: dict[str, int] = field(default_factory=dict)
    round_interval_s: float = 15.0
    _last_sent: float = -math.inf
    _last_round_shown: float = field(default_factory=time.monotonic)

    def result(self, trial_id: str, config: dict[str, Any], result: dict[str, Any]) -> None:
        if "rounds" in result:
            self.last_round[trial_id] = int(result["rounds"])
        value = result.get(self.metric)
        if "rounds" in result and time.monotonic() - self._last_round_shown >= self.round_interval_s:
            self._last_round_shown = time.monotonic()
            of = f"/{self.max_rounds}" if self.max_rounds else ""
            shown = f", {self.metric}={value:.4g}" if value is not None else ""
            print(f"trial {trial_id}: round {int(result['rounds'])}{of}{shown}", flush=True)
        if value is None:
            return
        known = self.per_trial.get(trial_id)
        if known is None or _better(value, known.value, self.mode):
            metrics = {k: float(v) for k, v in result.items()
                       if isinstance(v, int | float) and not isinstance(v, bool) and k in _METRIC_KEYS}
            self.per_trial[trial_id] = TrialBest(float(value), _plain(config), metrics)

    def best(self) -> TrialBest | None:
        out = None
        for candidate in self.per_trial.values():
            if out is None or _better(candidate.value, out.value, self.mode):
                out = candidate
        return out

    def summary(self) -> dict[str, Any]:
        best = self.best()
        out: dict[str, Any] = {"total": self.total, "finished": self.finished, "stoppedEarly": self.stopped_early}
        if best is not None:
            out["best"] = {"config": best.config, "metrics": {k: round(v, 6) for k, v in best.metrics.items()}}
        return out

    def done(self, trial_id: str = "", error: str | None = None, text: str = "") -> None:
        self.finished += 1
        if error:
            self.errors.append(error)
            self.error_texts.append(text or error)
            self.per_trial.pop(trial_id, None)
        elif self.max_rounds and self.last_round.get(trial_id, self.max_rounds) < self.max_rounds:
            self.stopped_early += 1
        best = self.best()
        shown = f"best {self.metric}={best.value:.4g} {_short(best.config)}" if best else "no result yet"
        print(f"trial {self.finished}/{self.total} {'failed' if error else 'done'}, {shown}", flush=True)
        now = time.monotonic()
        if now - self._last_sent >= self.interval_s:
            self._last_sent = now
            self.on_change(self.summary())


def _short(config: dict[str, Any]) -> str:
    parts = [f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in config.items()]
    return "{" + ", ".join(parts) + "}"


def tune_callback(progress: Progress) -> Any:
    """A Tune callback that feeds `progress` from the driver (where Tune runs its callbacks)."""
    from ray.tune import Callback

    class _Feed(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            progress.result(trial.trial_id, trial.config, result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            progress.done(trial.trial_id)

        def on_trial_error(self, iteration, trials, trial, **info):
            progress.done(trial.trial_id, *_trial_error(trial))

    return _Feed()


def _trial_error(trial: Any) -> tuple[str, str]:
    """A failed trial's error: its last line (what the report shows) and its whole text."""
    text = ""
    try:
        path = getattr(trial, "error_file", None) or ""
        if path:
            with open(path) as f:
                text = f.read()
    except OSError:
        pass
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    # The exception's own line ("ValueError: ...", "ray.exceptions.ActorDiedError: ..."), the last one of a chained
    # traceback; not the detail lines Ray prints after some (class_name, actor_id).
    headline = next((ln for ln in reversed(lines) if _EXCEPTION_LINE.match(ln)), lines[-1] if lines else "")
    return headline or f"trial {trial.trial_id} failed", text


_EXCEPTION_LINE = re.compile(r"^[\w.]*(?:Error|Exception|Exit)\b[^:]*:")

"""The learners: xgboost (single process or data-parallel with Ray Train) and scikit-learn estimators.

Every fit scores the validation rows through `model.Predictor`, the code the server predicts with, so a trial's
metric is measured exactly as the served model would be.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlcycle_runtime.model import Predictor
from mlcycle_runtime.train import evaluate

SUPPORTED = ("xgboost", "sklearn")
DEFAULT_ROUNDS = 100
ROUND_KEYS = ("num_boost_round", "n_estimators")
OBJECTIVES = {"binary": "binary:logistic", "regression": "reg:squarederror", "multiclass": "multi:softprob"}
DEFAULT_ESTIMATORS = {"binary": "sklearn.ensemble.HistGradientBoostingClassifier",
                      "multiclass": "sklearn.ensemble.HistGradientBoostingClassifier",
                      "regression": "sklearn.ensemble.HistGradientBoostingRegressor"}
# Parameters that belong to the training loop rather than to xgboost's booster.
LOOP_KEYS = (*ROUND_KEYS, "early_stopping_rounds", "verbosity")


class LearnerError(Exception):
    """A learner that cannot be built or trained as configured; the message says which setting is wrong."""


@dataclass(frozen=True)
class Learner:
    framework: str
    task: str
    fixed: dict[str, Any] = field(default_factory=dict)
    estimator: str | None = None
    n_classes: int = 2
    threads: int = 1

    def params(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """Fixed params with the sampled ones on top (a search dimension overrides a fixed value)."""
        return {**self.fixed, **sampled}


@dataclass
class Data:
    """Encoded matrices; `y` holds class indices (classification) or values (regression)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def check(learner: Learner) -> None:
    """Refuse what cannot run before any data is read into Ray."""
    if learner.framework not in SUPPORTED:
        raise LearnerError(f"model.framework {learner.framework} is not supported by this trainer; "
                           f"supported: {', '.join(SUPPORTED)}")
    if learner.framework == "sklearn":
        estimator_class(learner)


def xgb_params(learner: Learner, sampled: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Booster params and the number of boosting rounds for one configuration."""
    params = learner.params(sampled)
    rounds = next((int(params[k]) for k in ROUND_KEYS if k in params), DEFAULT_ROUNDS)
    booster = {k: v for k, v in params.items() if k not in LOOP_KEYS}
    booster.setdefault("objective", OBJECTIVES[learner.task])
    booster.setdefault("nthread", learner.threads)
    booster.setdefault("verbosity", 0)
    if learner.task == "multiclass":
        booster.setdefault("num_class", learner.n_classes)
    return booster, rounds


def estimator_class(learner: Learner) -> type:
    path = learner.estimator or DEFAULT_ESTIMATORS[learner.task]
    module, _, name = path.rpartition(".")
    if not module.startswith("sklearn."):
        raise LearnerError(f"model.estimator {path!r}: name a scikit-learn class such as "
                           f"{DEFAULT_ESTIMATORS[learner.task]}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise LearnerError(f"model.estimator {path!r} does not exist in this scikit-learn") from None


def make_estimator(learner: Learner, sampled: dict[str, Any]) -> Any:
    cls = estimator_class(learner)
    params = learner.params(sampled)
    try:
        return cls(**params)
    except TypeError as err:
        raise LearnerError(f"model.params for {cls.__name__}: {err}") from None


class ValidationScorer:
    """xgboost callback: after every boosting round, score the validation rows and hand the metrics on."""

    def __init__(self, learner: Learner, x_val: np.ndarray, y_val: np.ndarray,
                 on_round: Callable[[dict[str, float]], None]) -> None:
        import xgboost as xgb

        # Subclassing at run time keeps xgboost out of the import of this module.
        class _Callback(xgb.callback.TrainingCallback):
            def after_iteration(self, model, epoch, evals_log):
                scores = model.inplace_predict(x_val, iteration_range=(0, epoch + 1))
                on_round({**evaluate.compute(learner.task, y_val, scores), "rounds": epoch + 1})
                return False

        self.callback = _Callback()


def fit_xgboost(learner: Learner, sampled: dict[str, Any], x: np.ndarray, y: np.ndarray,
                rounds: int | None = None, callbacks: list | None = None) -> Any:
    import xgboost as xgb

    params, default_rounds = xgb_params(learner, sampled)
    try:
        return xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=rounds or default_rounds,
                         callbacks=callbacks or [], verbose_eval=False)
    except xgb.core.XGBoostError as err:
        raise LearnerError(f"xgboost rejected the model params: {str(err).splitlines()[0]}") from None


def fit_sklearn(learner: Learner, sampled: dict[str, Any], x: np.ndarray, y: np.ndarray) -> Any:
    estimator = make_estimator(learner, sampled)
    # Arrays from Ray's object store are read-only (zero-copy); some estimators' Cython code (the forests') needs
    # writable buffers. A copy only where the buffer is read-only.
    x, y = (np.require(a, requirements="W") for a in (x, y))
    try:
        return estimator.fit(x, y)
    except (ValueError, TypeError) as err:
        raise LearnerError(f"{type(estimator).__name__} could not be fitted: {str(err).splitlines()[0]}") from None


def fit(learner: Learner, sampled: dict[str, Any], x: np.ndarray, y: np.ndarray, rounds: int | None = None) -> Any:
    """One fit in this process (the refit of the best configuration, or a trial)."""
    if learner.framework == "xgboost":
        return fit_xgboost(learner, sampled, x, y, rounds)
    return fit_sklearn(learner, sampled, x, y)


def predict(learner: Learner, model: Any, x: np.ndarray) -> np.ndarray:
    return Predictor(model, learner.framework, learner.task).predict(x)


# --- Tune trials --------------------------------------------------------------------------------------------


def trial(config: dict[str, Any], *, learner: Learner, data: Data) -> None:
    """One Tune trial in one process: xgboost reports after every round (so ASHA can stop it), sklearn once."""
    from ray import tune

    if learner.framework == "xgboost":
        scorer = ValidationScorer(learner, data.x_val, data.y_val, tune.report)
        fit_xgboost(learner, config, data.x_train, data.y_train, callbacks=[scorer.callback])
    else:
        model = fit_sklearn(learner, config, data.x_train, data.y_train)
        scores = predict(learner, model, data.x_val)
        tune.report({**evaluate.compute(learner.task, data.y_val, scores), "rounds": 1})


def _worker_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: xgboost on this worker's shard of the rows; rank 0 scores validation and checkpoints."""
    import tempfile

    import ray
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    learner: Learner = config["learner"]
    data: Data = ray.get(config["data"])
    x, y = data.x_train, data.y_train
    if config.get("include_validation"):
        x, y = np.concatenate([x, data.x_val]), np.concatenate([y, data.y_val])
    shard = slice(rank, None, world)

    def on_round(metrics: dict[str, float]) -> None:
        ray.train.report(metrics)

    def report_empty(_: dict[str, float]) -> None:
        # Every worker reports each round: Ray Train's report is collective.
        ray.train.report({})

    scorer = ValidationScorer(learner, data.x_val, data.y_val, on_round if rank == 0 else report_empty)
    booster = fit_xgboost(learner, config["sampled"], x[shard], y[shard], rounds=config.get("rounds"),
                          callbacks=[] if config.get("include_validation") else [scorer.callback])
    if config.get("include_validation"):
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                booster.save_model(f"{tmp}/model.ubj")
                ray.train.report({"rounds": booster.num_boosted_rounds()},
                                 checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report({})


def fit_distributed(learner: Learner, sampled: dict[str, Any], data_ref: Any, workers: int,
                    resources: dict[str, float], storage_path: str, name: str, *, rounds: int | None = None,
                    include_validation: bool = False, in_tune: bool = False) -> Any:
    """Data-parallel xgboost over `workers` Ray Train workers; returns the booster when it is a refit."""
    import ray.train
    from ray.train.xgboost import XGBoostTrainer

    callbacks = []
    if in_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    trainer = XGBoostTrainer(
        _worker_loop,
        train_loop_config={"learner": learner, "sampled": sampled, "data": data_ref, "rounds": rounds,
                           "include_validation": include_validation},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker=resources),
        run_config=ray.train.RunConfig(name=name, storage_path=storage_path, callbacks=callbacks,
                                       failure_config=ray.train.FailureConfig(max_failures=0)),
    )
    result = trainer.fit()
    if not include_validation:
        return None
    import xgboost as xgb

    with result.checkpoint.as_directory() as path:
        booster = xgb.Booster()
        booster.load_model(f"{path}/model.ubj")
    return booster


def distributed_trial(config: dict[str, Any], *, learner: Learner, data_ref: list, workers: int,
                      resources: dict[str, float], storage_path: str) -> None:
    """One Tune trial that runs a Ray Train job; its per-round metrics reach Tune through TuneReportCallback."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    fit_distributed(learner, config, data_ref[0], workers, resources, storage_path, f"trial-{trial_id}",
                    in_tune=True)

"""The learners: xgboost (single process or data-parallel with Ray Train) and scikit-learn estimators.

Every fit scores the validation rows through `model.Predictor`, the code the server predicts with, so a trial's
metric is measured exactly as the served model would be.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlcycle_runtime.model import Predictor
from mlcycle_runtime.train import cluster, evaluate

SUPPORTED = ("xgboost", "sklearn")
DEFAULT_ROUNDS = 100
ROUND_KEYS = ("num_boost_round", "n_estimators")
OBJECTIVES = {"binary": "binary:logistic", "regression": "reg:squarederror", "multiclass": "multi:softprob"}
DEFAULT_ESTIMATORS = {"binary": "sklearn.ensemble.HistGradientBoostingClassifier",
                      "multiclass": "sklearn.ensemble.HistGradientBoostingClassifier",
                      "regression": "sklearn.ensemble.HistGradientBoostingRegressor"}
# Parameters that belong to the training loop rather than to xgboost's booster.
LOOP_KEYS = (*ROUND_KEYS, "early_stopping_rounds", "verbosity")


class WorkersFailed(Exception):
    """Ray Train's workers failed; the message holds each worker's own error in full (where it ran, why)."""


class LearnerError(Exception):
    """A learner that cannot be built or trained as configured; the message says which setting is wrong."""


class PeerLost(Exception):
    """Data-parallel XGBoost's collective communication failed: another training worker (or its pod) was lost."""


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
        first = str(err).splitlines()[0]
        if "/collective/" in str(err):  # the allreduce of a round: a peer's connection closed, not the params
            raise PeerLost(f"{cluster.PEER_LOST} (a worker or its pod was lost): {first}") from None
        raise LearnerError(f"xgboost rejected the model params: {first}") from None


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
                    include_validation: bool = False, callbacks: list | None = None) -> Any:
    """Data-parallel xgboost over `workers` Ray Train workers; returns the booster when it is a refit."""
    import ray.train
    from ray.train.xgboost import XGBoostTrainer

    trainer = XGBoostTrainer(
        _worker_loop,
        train_loop_config={"learner": learner, "sampled": sampled, "data": data_ref, "rounds": rounds,
                           "include_validation": include_validation},
        # One worker per Ray node where the cluster has several (a RayJob's worker pods, each sized for one
        # worker): data parallelism across machines, and one pod's loss is one worker's. PACK would fill the first
        # pod's CPUs first, and plain SPREAD packs too when a pod is missing: Ray Train retries a worker group
        # whose start failed, and put both workers of the retry into the one pod left, which ran out of memory.
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker=resources,
                                               placement_strategy=cluster.placement_strategy()),
        run_config=ray.train.RunConfig(name=name, storage_path=storage_path, callbacks=callbacks or [],
                                       failure_config=ray.train.FailureConfig(max_failures=0)),
    )
    try:
        result = trainer.fit()
    except Exception as err:
        if not getattr(err, "worker_failures", None):
            raise
        # Ray Train shortens each worker's error in its message; Tune keeps only the message of a trial's error.
        raise WorkersFailed(cluster.full_text(err)) from err
    if not include_validation:
        return None
    import xgboost as xgb

    with result.checkpoint.as_directory() as path:
        booster = xgb.Booster()
        booster.load_model(f"{path}/model.ubj")
    return booster


# --- data-parallel Tune trials --------------------------------------------------------------------------------
#
# A trial drives a Ray Train run whose controller it owns. When Tune stops the trial (ASHA), the trial's process
# ends and takes the controller with it; the workers' placement group, created by the controller, outlives it
# until the job ends, because only Ray Train's cleaner actor frees it and that one needs the dashboard's State API.
# So a stopping trial first aborts its run the way Ctrl-C does (`TrainController.abort`: workers stopped,
# placement group removed), with the controller's handle handed over by a controller callback.

ABORT_TIMEOUT_S = 60.0


@dataclass
class _Run:
    controllers: Any  # the search's ControllerRegistry actor
    reports: Any  # the queue TuneReportCallback hands results to the trial through
    stopping: threading.Event = field(default_factory=threading.Event)


# The data-parallel trials running in this process (a Tune trial actor), by trial id.
_RUNS: dict[str, _Run] = {}


class ControllerRegistry:
    """Ray actor: the Ray Train controller of each running data-parallel trial, by trial id."""

    def __init__(self) -> None:
        self._controllers: dict[str, Any] = {}

    def add(self, trial_id: str, controller: Any) -> None:
        self._controllers[trial_id] = controller

    def pop(self, trial_id: str) -> Any:
        return self._controllers.pop(trial_id, None)


def _registering_callback(controllers: Any, trial_id: str) -> Any:
    """A Ray Train controller callback that files its controller's handle under `trial_id` as it starts."""
    import ray
    from ray.train.v2._internal.execution.callback import ControllerCallback

    class _Register(ControllerCallback):
        def after_controller_start(self, train_run_context):
            ray.get(controllers.add.remote(trial_id, ray.get_runtime_context().current_actor))

    return _Register()


def distributed_trial(config: dict[str, Any], *, learner: Learner, data_ref: list, workers: int,
                      resources: dict[str, float], storage_path: str, controllers: Any) -> None:
    """One Tune trial that runs a Ray Train job; its per-round metrics reach Tune through TuneReportCallback."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    report = TuneReportCallback()
    run = _RUNS[trial_id] = _Run(controllers, report._training_actor_item_queue)
    try:
        fit_distributed(learner, config, data_ref[0], workers, resources, storage_path, f"trial-{trial_id}",
                        callbacks=[report, _registering_callback(controllers, trial_id)])
    except Exception:
        if not run.stopping.is_set():
            raise
        # Tune stopped the trial and its run was aborted on purpose: the run's error is not the trial's.
    finally:
        _RUNS.pop(trial_id, None)
        controllers.pop.remote(trial_id)


def abort_run(trial_id: str, timeout_s: float = ABORT_TIMEOUT_S) -> None:
    """Abort the Ray Train run of a trial Tune is stopping (nothing when it has none running in this process)."""
    import time

    import ray
    from ray.util.queue import Empty

    run = _RUNS.get(trial_id)
    if run is None:
        return
    run.stopping.set()
    controller = ray.get(run.controllers.pop.remote(trial_id))
    if controller is None:
        return
    aborted = controller.abort.remote()
    deadline = time.monotonic() + timeout_s
    while not ray.wait([aborted], timeout=0.2)[0] and time.monotonic() < deadline:
        # The controller hands results on inside its event loop and waits while Tune's one-slot queue is full;
        # Tune reads no more from a stopped trial, so empty it for the abort to get its turn.
        try:
            while True:
                run.reports.get_nowait()
        except Empty:
            pass
    # The controller exits as it aborts: the call ends with the actor's death.
    with contextlib.suppress(Exception):
        ray.get(aborted, timeout=1)


class AbortsItsRun:
    """Mixin for the function trainable of `distributed_trial`: stopping the trial aborts its Ray Train run."""

    def cleanup(self) -> None:
        abort_run(self.trial_id)
        super().cleanup()


def controller_registry() -> Any:
    """A ControllerRegistry actor for one search; the caller keeps its handle until the search ends."""
    import ray

    return ray.remote(num_cpus=0, resources=dict(cluster.ON_HEAD))(ControllerRegistry).remote()


def distributed_trainable(learner: Learner, data_ref: Any, workers: int, resources: dict[str, float],
                          storage_path: str, controllers: Any) -> Any:
    """The Tune trainable for data-parallel trials: `distributed_trial` whose stop aborts its Ray Train run."""
    from ray import tune
    from ray.tune.trainable.function_trainable import wrap_function

    trainable = tune.with_parameters(distributed_trial, learner=learner, data_ref=[data_ref], workers=workers,
                                     resources=resources, storage_path=storage_path, controllers=controllers)
    trainable.__mixins__ = (AbortsItsRun,)
    return wrap_function(trainable)

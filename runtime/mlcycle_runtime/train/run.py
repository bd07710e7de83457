"""One training run, phase by phase: load, validate, split, tune, evaluate, save, each reported as it happens.

The final model is the best configuration refitted on train + validation: with a time split the validation
rows are the newest before the test window, the closest to what the model will serve, and the rounds the best
trial needed (its best boosting round) carry the early stopping over to the refit.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlcycle_runtime import reference, storage
from mlcycle_runtime.config import TrainConfig
from mlcycle_runtime.report import Reporter
from mlcycle_runtime.schema import FeatureSchema
from mlcycle_runtime.train import cluster, evaluate, learners, search, validate
from mlcycle_runtime.train import data as datamod
from mlcycle_runtime.train.split import Split, sizes, time_split

EXPECTED = (datamod.DataError, learners.LearnerError, search.SearchError, cluster.ResourceError,
            storage.StorageError)


class Failed(Exception):
    """The run cannot go on; the message is the report's one-line error."""


class TrialsFailed(Exception):
    """The whole text of every failed trial's error (the cause of a Failed that shows the first one's last line)."""


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_version() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def _one_line(text: str, limit: int = 2000) -> str:
    return " ".join(str(text).split())[:limit]


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in metrics.items()}


class Run:
    def __init__(self, config: TrainConfig, reporter: Reporter | None = None) -> None:
        self.config = config
        self.reporter = reporter or Reporter("TrainingJob", config.name, config.namespace,
                                             config.report.status_field)
        self.result: dict[str, Any] = {"lineage": {"startTime": now()}}
        self.spec = config.spec

    def send(self, **fields: Any) -> None:
        self.result.update(fields)
        self.reporter.send(dict(self.result))

    def execute(self) -> int:
        """Run the job; 0 after Succeeded, 1 after Failed (always reported before returning)."""
        scratch = Path(tempfile.mkdtemp(prefix="mlcycle-train-"))
        started = False
        try:
            self.send(phase="ValidatingData")
            learner, plan = self.prepare()
            loaded, split = self.load_and_validate()
            started = cluster.start(self.spec.distribution)
            self.train_and_save(learner, plan, loaded, split, scratch)
            return 0
        except Failed as err:
            return self.fail(cluster.explain(str(err), err.__cause__ or str(err)))
        except EXPECTED as err:
            return self.fail(str(err))
        except Exception as err:
            traceback.print_exc()
            return self.fail(cluster.explain(f"{type(err).__name__}: {err}", err))
        finally:
            cluster.stop(started)
            shutil.rmtree(scratch, ignore_errors=True)

    def fail(self, error: str) -> int:
        self.result["lineage"]["endTime"] = now()
        self.send(phase="Failed", error=_one_line(error))
        print(f"mlcycle: training failed: {_one_line(error)}", file=sys.stderr, flush=True)
        return 1

    # --- phases ---------------------------------------------------------------------------------------------

    def prepare(self) -> tuple[learners.Learner, search.Plan]:
        """Everything decidable from the config alone, checked before any data is read."""
        spec, dist = self.spec, self.spec.distribution
        if self.config.metric not in evaluate.metric_names(spec.model.task):
            raise Failed(f"metric {self.config.metric} is not measured for task {spec.model.task}; choose one of "
                         f"{', '.join(evaluate.metric_names(spec.model.task))}")
        if dist.workers > 1 and spec.model.framework != "xgboost":
            raise Failed(f"distribution.workers {dist.workers}: only xgboost trains data-parallel; "
                         "use one worker for other frameworks")
        fixed = dict(spec.model.params)
        if dist.gpu_per_worker and spec.model.framework == "xgboost":
            fixed.setdefault("device", "cuda")
        learner = learners.Learner(spec.model.framework, spec.model.task, fixed, spec.model.estimator,
                                   threads=max(1, int(dist.cpu_per_worker)))
        learners.check(learner)
        return learner, search.plan(spec.tuning, self.config.metric, self.config.mode)

    def load_and_validate(self) -> tuple[datamod.Loaded, Split]:
        data = self.spec.data
        loaded = datamod.load(self.config)
        self.result["lineage"].update(dataFingerprint=loaded.fingerprint, featureRefs=loaded.feature_refs)
        n_train, _, _ = sizes(len(loaded.frame), data.split.validation_fraction, data.split.test_fraction)
        problems = validate.violations(loaded.frame, self.config, loaded.features, n_train)
        problems += [f"evaluation.slices: column {c} is not in the data"
                     for c in self.spec.evaluation.slices if c not in loaded.frame.columns]
        if problems:
            self.result["validation"] = {"passed": False, "violations": problems}
            shown = "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
            raise Failed(f"bad data: {len(problems)} problems: {shown}")
        self.result["validation"] = {"passed": True, "violations": []}
        split = time_split(loaded.frame, data.source.timestamp_column, data.split.validation_fraction,
                           data.split.test_fraction)
        self.result["lineage"]["rows"] = split.rows()
        return loaded, split

    def encode_labels(self, frame: pd.DataFrame, classes: list[Any]) -> np.ndarray:
        values = frame[self.spec.data.label_column]
        if self.spec.model.task == "regression":
            return values.to_numpy(dtype=np.float64)
        return pd.Categorical(values, categories=classes).codes.astype(np.int64)

    def train_and_save(self, learner: learners.Learner, plan: search.Plan, loaded: datamod.Loaded, split: Split,
                       scratch: Path) -> None:
        spec, config = self.spec, self.config
        task = spec.model.task
        classes = datamod.label_classes(loaded.frame[spec.data.label_column]) if task != "regression" else []
        learner = learners.Learner(learner.framework, task, learner.fixed, learner.estimator,
                                   n_classes=max(2, len(classes)), threads=learner.threads)
        schema = FeatureSchema.infer(split.train, loaded.features)
        data = learners.Data(schema.encode_frame(split.train), self.encode_labels(split.train, classes),
                             schema.encode_frame(split.validation), self.encode_labels(split.validation, classes))
        at_once = cluster.trials_at_once(spec.distribution)
        if spec.distribution.workers > 1 and at_once < plan.max_concurrent:
            # A data-parallel trial's driver holds no CPU, so Tune would start trials whose workers cannot be
            # placed yet; they would wait, each holding its driver's memory on the head.
            plan = search.plan(spec.tuning, config.metric, config.mode, at_most=at_once)

        self.send(phase="Training", trials={"total": plan.total, "finished": 0})
        ray_storage = cluster.storage_path(config, scratch / "ray")
        max_rounds = None
        if learner.framework == "xgboost":
            max_rounds = search.max_rounds(spec.tuning, learners.xgb_params(learner, {})[1])
        progress = search.Progress(plan.total, config.metric, config.mode, max_rounds=max_rounds,
                                   on_change=lambda trials: self.send(trials=trials))
        best = self.search(learner, plan, data, progress, ray_storage)
        self.send(trials=progress.summary())

        self.send(phase="Evaluating")
        # The round where the best trial peaked: the refit stops there too.
        rounds = int(best.metrics.get("rounds", 0)) if learner.framework == "xgboost" else 0
        rounds = rounds or None
        model = self.refit(learner, best.config, data, rounds, ray_storage)
        evaluated_on = split.test if len(split.test) else split.validation
        x_test = schema.encode_frame(evaluated_on)
        y_test = self.encode_labels(evaluated_on, classes)
        scores = learners.predict(learner, model, x_test)
        ev = spec.evaluation
        metrics = evaluate.compute(task, y_test, scores, calibration=ev.calibration)
        baselines = self.baselines(task, data.y_train, y_test, evaluated_on, len(classes))
        gates = evaluate.gates(ev.gates, config.metric, config.mode, metrics, baselines)
        slices = evaluate.slices(evaluated_on, ev.slices, task, y_test, scores)
        params = learner.params(best.config)
        if rounds:
            params["num_boost_round"] = rounds
        self.result["lineage"].update(params=params, image=os.environ.get("MLCYCLE_IMAGE") or spec.image)
        if spec.distribution.workers > 1:
            self.result["lineage"]["hosts"] = cluster.train_worker_hosts()
        if not len(split.test):
            self.result.setdefault("notes", []).append("testFraction is 0: metrics are on the validation rows")

        version = new_version()
        uri = storage.version_uri(config.storage.uri, config.storage.model_path, version)
        train_scores = learners.predict(learner, model, data.x_train)
        ref = reference.build(split.train, schema, train_scores)
        self.result["lineage"]["endTime"] = now()
        self.save(learner, model, version, uri, schema, classes, metrics, baselines, gates, ref)
        self.send(phase="Succeeded", model={"name": spec.output.model_name, "version": version, "uri": uri},
                  metrics=_rounded(metrics), baselines={k: _rounded(v) for k, v in baselines.items()},
                  gates=gates, slices=[{**s, "metrics": _rounded(s["metrics"])} for s in slices])
        best_value = metrics.get(config.metric)
        print(f"model {spec.output.model_name} version {version} saved to {uri}; test {config.metric}="
              f"{best_value if best_value is None else round(best_value, 4)}; gates "
              f"{'passed' if all(g['passed'] for g in gates) else 'not passed'}", flush=True)

    def search(self, learner: learners.Learner, plan: search.Plan, data: learners.Data,
               progress: search.Progress, ray_storage: str) -> search.TrialBest:
        import ray
        from ray import tune

        dist, tuning = self.spec.distribution, self.spec.tuning
        algorithm = tuning.algorithm if plan.space else "no"
        capped = tuning is not None and plan.space and plan.max_concurrent < tuning.max_concurrent_trials
        print(f"tuning: {plan.total} trial(s), {algorithm} search, at most {plan.max_concurrent} at a time"
              + (f" (maxConcurrentTrials {tuning.max_concurrent_trials}, but the Ray cluster holds the workers of "
                 f"{plan.max_concurrent} at once)" if capped else ""), flush=True)
        if dist.workers > 1:
            resources = {"CPU": dist.cpu_per_worker, "GPU": dist.gpu_per_worker}
            # Held in this frame while Tune runs: the trials file their Ray Train controllers in it.
            controllers = learners.controller_registry()
            trainable = learners.distributed_trainable(learner, ray.put(data), dist.workers, resources, ray_storage,
                                                       controllers)
            # The trial only drives a Ray Train run whose workers hold the CPUs: it runs on the head, no CPU.
            trainable = tune.with_resources(trainable, dict(cluster.TRIAL_DRIVER))
        else:
            trainable = tune.with_resources(tune.with_parameters(learners.trial, learner=learner, data=data),
                                            {"cpu": dist.cpu_per_worker, "gpu": dist.gpu_per_worker})
        tuner = tune.Tuner(
            trainable, param_space=plan.space,
            tune_config=tune.TuneConfig(
                metric=self.config.metric, mode=self.config.mode, num_samples=plan.num_samples,
                search_alg=plan.search_alg,
                scheduler=search.scheduler(tuning, progress.max_rounds or 1),
                max_concurrent_trials=plan.tune_max_concurrent()),
            run_config=tune.RunConfig(name="tune", storage_path=ray_storage, verbose=0,
                                      callbacks=[search.tune_callback(progress)]),
        )
        tuner.fit()
        best = progress.best()
        if best is None:
            first = progress.errors[0] if progress.errors else "no trial reported a result"
            raise Failed(f"every trial failed ({len(progress.errors)} of {plan.total}): {first}") from TrialsFailed(
                "\n".join(progress.error_texts))
        if progress.errors:
            self.result.setdefault("notes", []).append(
                f"{len(progress.errors)} of {plan.total} trials failed and were left out of the search; the first: "
                + _one_line(cluster.explain(progress.errors[0], progress.error_texts[0]), 300))
        return best

    def refit(self, learner: learners.Learner, config: dict[str, Any], data: learners.Data, rounds: int | None,
              ray_storage: str) -> Any:
        dist = self.spec.distribution
        if dist.workers > 1:
            import ray

            resources = {"CPU": dist.cpu_per_worker, "GPU": dist.gpu_per_worker}
            return learners.fit_distributed(learner, config, ray.put(data), dist.workers, resources, ray_storage,
                                            "refit", rounds=rounds, include_validation=True)
        x = np.concatenate([data.x_train, data.x_val])
        y = np.concatenate([data.y_train, data.y_val])
        return learners.fit(learner, config, x, y, rounds=rounds)

    def baselines(self, task: str, y_train: np.ndarray, y_test: np.ndarray, test: pd.DataFrame,
                  n_classes: int) -> dict[str, dict[str, float]]:
        wanted = self.spec.evaluation.baselines
        out = {}
        for kind in ("zeroRule", "random"):
            if kind in wanted:
                scores = evaluate.baseline_scores(task, y_train, len(y_test), kind, n_classes=max(2, n_classes))
                out[kind] = evaluate.compute(task, y_test, scores)
        if "champion" in wanted:
            champion = self.champion(task, y_test, test)
            if champion is not None:
                out["champion"] = champion
        return out

    def champion(self, task: str, y_test: np.ndarray, test: pd.DataFrame) -> dict[str, float] | None:
        """The current champion's metrics on the same test rows; None (with a note) when there is none to load."""
        ref = self.config.champion
        notes = self.result.setdefault("notes", [])
        if ref is None or not ref.uri:
            notes.append("no champion: nothing to compare with")
            return None
        try:
            from mlcycle_runtime.model import load_version

            loaded = load_version(ref.uri)
            missing = [n for n in loaded.card.features.names if n not in test.columns]
            if missing:
                raise ValueError(f"its features {', '.join(missing)} are not in this data")
            scores = loaded.predictor.predict(loaded.card.features.encode_frame(test))
            return evaluate.compute(task, y_test, scores)
        except Exception as err:
            notes.append(f"champion {ref.uri} skipped: {_one_line(str(err), 300)}")
            return None

    def save(self, learner: learners.Learner, model: Any, version: str, uri: str, schema: FeatureSchema,
             classes: list[Any], metrics: dict[str, float], baselines: dict[str, dict[str, float]],
             gates: list[dict[str, Any]], ref: reference.Reference) -> None:
        from mlcycle_runtime.model import ModelCard, save_version

        spec = self.spec
        card = ModelCard(name=spec.output.model_name, version=version, framework=learner.framework,
                         task=spec.model.task, features=schema, label=spec.data.label_column,
                         metrics=_rounded(metrics), baselines={k: _rounded(v) for k, v in baselines.items()},
                         gates=gates, gates_passed=all(g["passed"] for g in gates),
                         lineage={**self.result["lineage"], "trainingJob": self.config.name,
                                  "namespace": self.config.namespace},
                         created_at=now(), classes=classes)
        save_version(model, card, ref, uri)

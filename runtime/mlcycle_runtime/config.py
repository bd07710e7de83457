"""Workload configs (runtime contract): the JSON the operator renders into /etc/mlcycle/config.json.

The runtime validates the file with its own models, which accept camelCase as the operator writes it, and
exits non-zero with a one-line reason when it is wrong (`load`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from mlcycle_runtime.bodylimit import DEFAULT_MAX_REQUEST_BYTES

DEFAULT_PATH = "/etc/mlcycle/config.json"


class ConfigModel(BaseModel):
    """camelCase on the wire, snake_case in Python; keys the runtime does not know are ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


# --- the TrainingJob spec, as far as the trainer reads it ---------------------------------------------------


class EntitySource(ConfigModel):
    uri: str
    timestamp_column: str = "event_timestamp"
    entity_columns: list[str] = Field(default_factory=list)


class TimeSplit(ConfigModel):
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)


class Data(ConfigModel):
    source: EntitySource
    feature_service: str | None = None
    features: list[str] = Field(default_factory=list)
    label_column: str
    split: TimeSplit = Field(default_factory=TimeSplit)


class ColumnRule(ConfigModel):
    name: str
    type: Literal["int", "float", "string", "bool", "timestamp"] | None = None
    min: float | None = None
    max: float | None = None
    allowed_values: list[str] = Field(default_factory=list)
    max_missing_fraction: float = Field(0.0, ge=0, le=1)


class Validation(ConfigModel):
    columns: list[ColumnRule] = Field(default_factory=list)
    min_rows: int = Field(100, ge=1)
    allow_extra_columns: bool = True


class ModelSpec(ConfigModel):
    framework: Literal["xgboost", "sklearn"]
    estimator: str | None = None
    task: Literal["binary", "multiclass", "regression"] = "binary"
    params: dict[str, Any] = Field(default_factory=dict)


class SearchDimension(ConfigModel):
    type: Literal["uniform", "loguniform", "randint", "choice", "grid"]
    lower: float | None = None
    upper: float | None = None
    values: list[Any] = Field(default_factory=list)


class Scheduler(ConfigModel):
    type: Literal["none", "asha"] = "asha"
    grace_period: int = Field(5, ge=1)
    reduction_factor: float = Field(3.0, gt=1)


class Tuning(ConfigModel):
    num_samples: int = Field(1, ge=1)
    search_space: dict[str, SearchDimension] = Field(default_factory=dict)
    algorithm: Literal["random", "grid", "optuna", "hyperopt"] = "random"
    scheduler: Scheduler = Field(default_factory=Scheduler)
    metric: str | None = None
    mode: Literal["max", "min"] | None = None
    max_concurrent_trials: int = Field(1, ge=1)


class Distribution(ConfigModel):
    workers: int = Field(1, ge=1)
    cpu_per_worker: float = Field(1, gt=0)
    gpu_per_worker: int = Field(0, ge=0)
    memory_per_worker: str = "2Gi"


class Gates(ConfigModel):
    min_metric: float | None = None
    min_lift_over_champion: float | None = None
    min_lift_over_baseline: float | None = 0.0


class Evaluation(ConfigModel):
    baselines: list[Literal["zeroRule", "random", "champion"]] = Field(
        default_factory=lambda: ["zeroRule", "random", "champion"])
    gates: Gates = Field(default_factory=Gates)
    slices: list[str] = Field(default_factory=list)
    calibration: bool = True


class Output(ConfigModel):
    model_name: str


class TrainingSpec(ConfigModel):
    project: str
    data: Data
    validation: Validation = Field(default_factory=Validation)
    model: ModelSpec
    tuning: Tuning | None = None
    distribution: Distribution = Field(default_factory=Distribution)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    output: Output
    image: str | None = None


# --- the workload configs -------------------------------------------------------------------------------------


class Storage(ConfigModel):
    uri: str
    model_path: str


class FeatureStoreRef(ConfigModel):
    repo_path: str = "/etc/feast"


class ModelRef(ConfigModel):
    """A model version: where it was exported (`<storage>/<project>/models/<name>/<version>`)."""

    name: str | None = None
    version: str | None = None
    uri: str | None = None
    training_job: str | None = None


class Champion(ConfigModel):
    """The project's model in service, which a new model must beat (as the operator resolves it)."""

    model: str | None = None
    version: str | None = None
    uri: str | None = None
    training_job: str | None = None


class ReportTarget(ConfigModel):
    status_field: str


class Objective(ConfigModel):
    name: str
    direction: Literal["maximize", "minimize"] = "maximize"
    threshold: float | None = None


class TrainConfig(ConfigModel):
    kind: Literal["TrainingJob"] = "TrainingJob"
    name: str
    namespace: str = "default"
    project: str
    spec: TrainingSpec
    objective: Objective | None = None
    metric: str
    mode: Literal["max", "min"] = "max"
    storage: Storage
    feature_store: FeatureStoreRef | None = None
    champion: Champion | None = None
    report: ReportTarget = Field(default_factory=lambda: ReportTarget(status_field="result"))


class Batching(ConfigModel):
    enabled: bool = True
    max_batch_size: int = Field(32, ge=1)
    max_latency_ms: int = Field(5, ge=1)


class OnlineFeatures(ConfigModel):
    feature_service: str
    entity_keys: list[str] = Field(min_length=1)


class ServeConfig(ConfigModel):
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    name: str
    namespace: str = "default"
    model: ModelRef
    port: int = 3000
    batching: Batching = Field(default_factory=Batching)
    online_features: OnlineFeatures | None = None
    feature_store: FeatureStoreRef | None = None
    max_request_bytes: int = Field(DEFAULT_MAX_REQUEST_BYTES, ge=1)


class Route(ConfigModel):
    version: str
    weight: int = Field(0, ge=0, le=100)
    role: Literal["stable", "candidate"] = "stable"
    shadow_percent: int = Field(0, ge=0, le=100)
    url: str


class PredictionLog(ConfigModel):
    uri: str = Field(min_length=1)
    sample_rate: float = Field(gt=0, le=1)
    flush_seconds: float = Field(60.0, gt=0)
    entity_keys: list[str] = Field(default_factory=list)


class RouterConfig(ConfigModel):
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    name: str
    namespace: str = "default"
    port: int = 8080
    sticky_header: str = "x-mlcycle-variant"
    routes: list[Route] = Field(default_factory=list)
    reference_uri: str | None = None
    max_request_bytes: int = Field(DEFAULT_MAX_REQUEST_BYTES, ge=1)
    prediction_log: PredictionLog | None = None


class DriftTest(ConfigModel):
    method: Literal["psi", "ks", "wasserstein", "jensenShannon", "chiSquared"]
    threshold: float


class DriftTests(ConfigModel):
    numeric: DriftTest = Field(default_factory=lambda: DriftTest(method="psi", threshold=0.2))
    categorical: DriftTest = Field(default_factory=lambda: DriftTest(method="chiSquared", threshold=0.01))


class DriftReference(ConfigModel):
    source: Literal["TrainingJob", "Uri"] = "TrainingJob"
    uri: str | None = None


class DriftSpec(ConfigModel):
    deployment: str
    reference: DriftReference = Field(default_factory=DriftReference)
    features: list[str] = Field(default_factory=list)
    prediction: bool = True
    tests: DriftTests = Field(default_factory=DriftTests)
    window: str = "1h"
    schedule: str = "5m"
    min_samples: int = Field(500, ge=1)


class DriftConfig(ConfigModel):
    kind: Literal["DriftMonitor"] = "DriftMonitor"
    name: str
    namespace: str = "default"
    deployment: str
    spec: DriftSpec
    version: str | None = None
    reference_uri: str | None = None
    prometheus_url: str | None = None
    port: int = 8080
    report: ReportTarget = Field(default_factory=lambda: ReportTarget(status_field="report"))


class BatchInput(ConfigModel):
    uri: str
    passthrough: list[str] = Field(default_factory=list)


class BatchOutput(ConfigModel):
    uri: str


class BatchConfig(ConfigModel):
    """A BatchPrediction run: the model the operator resolved, the input to score and where the run's directory goes."""

    kind: Literal["BatchPrediction"] = "BatchPrediction"
    name: str
    namespace: str = "default"
    project: str | None = None
    model: ModelRef
    input: BatchInput
    output: BatchOutput
    max_invalid_fraction: float = Field(0.0, ge=0, le=1)
    batch_size: int = Field(65536, ge=1)
    report: ReportTarget = Field(default_factory=lambda: ReportTarget(status_field="report"))


class ConfigError(SystemExit):
    """A config the workload cannot run with; its message is the one-line reason printed on exit."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"mlcycle: invalid config: {reason}")


Config = TypeVar("Config", bound=ConfigModel)


def parse(model: type[Config], data: Any) -> Config:
    """Validate a decoded config; the first problem becomes a one-line ConfigError naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise ConfigError(f"{where}: {first['msg']}{more}") from None


def load(model: type[Config], path: str | Path = DEFAULT_PATH) -> Config:
    """Read and validate a config file; exits non-zero with a one-line reason when it is missing or wrong."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not JSON: {err.msg} at line {err.lineno}") from None
    return parse(model, data)


def fail(reason: str) -> None:
    """Print a one-line reason to stderr (for callers that exit themselves)."""
    print(f"mlcycle: {reason}", file=sys.stderr)


BIND_HOST_ENV = "MLCYCLE_BIND_HOST"


def bind_host() -> str:
    """Where servers listen: every interface in a pod; the pod's own address on the local process node."""
    return os.environ.get(BIND_HOST_ENV, "0.0.0.0")

"""TrainingJob: one training run — data, validation, model, tuning, distribution, evaluation, output."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from .common import (
    ApiModel,
    FreeForm,
    Name,
    PositiveDuration,
    Quantity,
    StatusBase,
    Text,
    pvc_claim_rule,
    validations,
)


class EntitySource(ApiModel):
    """The rows to train on: entity keys with event timestamps (and the label), as Parquet."""

    uri: Text = Field(description="Parquet file or directory (file://, s3://, or a path in the project storage).")
    timestamp_column: Text = Field("event_timestamp", description="Event time of each row; drives the split.")
    entity_columns: list[Text] = Field(default_factory=list, description="Entity key columns for the Feast join.")

    model_config = validations(pvc_claim_rule("uri"))


class TimeSplit(ApiModel):
    """A split by event time, so nothing is learnt from the future: train < validation < test."""

    validation_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the latest rows before test.")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="Share of the latest rows held out for the report.")

    model_config = validations({
        "rule": "self.validationFraction + self.testFraction < 1.0",
        "message": "validationFraction + testFraction must leave rows to train on",
        "fieldPath": ".validationFraction",
    })


class Data(ApiModel):
    """Where training data comes from and how it is split."""

    source: EntitySource = Field(description="Entity rows with timestamps and label.")
    feature_service: Text | None = Field(None, description="Feast feature service to join (point-in-time).")
    features: list[Text] = Field(default_factory=list, description="Feast feature refs (view:feature) to join.")
    label_column: Text = Field(description="Column with the target.")
    split: TimeSplit = Field(default_factory=TimeSplit, description="Time-based train/validation/test split.")

    model_config = validations({
        "rule": "!(has(self.featureService) && size(self.features) > 0)",
        "message": "set featureService or features, not both",
        "fieldPath": ".featureService",
    })


class ColumnRule(ApiModel):
    """What one column must look like; every violation is listed in the job's report."""

    name: Text = Field(description="Column name.")
    type: Literal["int", "float", "string", "bool", "timestamp"] | None = Field(None, description="Expected type.")
    min: float | None = Field(None, description="Smallest allowed value (numeric columns).")
    max: float | None = Field(None, description="Largest allowed value (numeric columns).")
    allowed_values: list[str] = Field(default_factory=list, description="Allowed values (categorical columns).")
    max_missing_fraction: float = Field(0.0, ge=0, le=1, description="Largest share of nulls tolerated.")

    model_config = validations({
        "rule": "!has(self.min) || !has(self.max) || self.min <= self.max",
        "message": "min must not exceed max", "fieldPath": ".min",
    })


class Validation(ApiModel):
    """Data validation run before anything trains; a job on bad data fails fast with a report."""

    columns: list[ColumnRule] = Field(default_factory=list, max_length=500, description="Per-column rules.")
    min_rows: int = Field(100, ge=1, description="Fewest rows to train on after the split.")
    allow_extra_columns: bool = Field(True, description="Whether columns without a rule are accepted.")


class Model(ApiModel):
    """The learner and its fixed parameters."""

    # What the trainer in the runtime image trains; anything else would only fail at run time.
    framework: Literal["xgboost", "sklearn"] = Field(description="Training framework.")
    estimator: str | None = Field(
        None, pattern=r"^sklearn(\.[A-Za-z_][A-Za-z0-9_]*){2,}$",
        description="sklearn estimator class (e.g. sklearn.ensemble.RandomForestClassifier).",
    )
    task: Literal["binary", "multiclass", "regression"] = Field("binary", description="Prediction task.")
    params: FreeForm = Field(default_factory=dict, description="Fixed hyper-parameters passed to the learner.")

    model_config = validations({
        "rule": "self.framework == 'sklearn' || !has(self.estimator)",
        "message": "estimator is for framework sklearn only", "fieldPath": ".estimator",
    })


class SearchDimension(ApiModel):
    """One hyper-parameter's search range."""

    type: Literal["uniform", "loguniform", "randint", "choice", "grid"] = Field(description="Sampling distribution.")
    lower: float | None = Field(None, description="Lower bound (uniform, loguniform, randint).")
    upper: float | None = Field(None, description="Upper bound, exclusive for randint.")
    # Strings, so that CEL can see the list (untyped items are invisible to it); the trainer parses each
    # one as JSON first, so "3", "0.1" and "true" become numbers and booleans and "gbtree" stays a string.
    values: list[str] = Field(
        default_factory=list, max_length=100, description='Candidates (choice, grid), as strings: "3", "0.1", "gbtree".'
    )

    model_config = validations(
        {"rule": "!(self.type in ['uniform', 'loguniform', 'randint']) || (has(self.lower) && has(self.upper))",
         "message": "uniform, loguniform and randint need lower and upper", "fieldPath": ".lower"},
        {"rule": "!has(self.lower) || !has(self.upper) || self.lower < self.upper",
         "message": "lower must be below upper", "fieldPath": ".lower"},
        {"rule": "self.type != 'loguniform' || !has(self.lower) || self.lower > 0.0",
         "message": "loguniform needs lower > 0", "fieldPath": ".lower"},
        {"rule": "!(self.type in ['choice', 'grid']) || size(self.values) > 0",
         "message": "choice and grid need values", "fieldPath": ".values"},
    )


class Scheduler(ApiModel):
    """Early stopping of bad trials."""

    type: Literal["none", "asha"] = Field("asha", description="Trial scheduler.")
    grace_period: int = Field(5, ge=1, description="Iterations before a trial may be stopped.")
    reduction_factor: float = Field(3.0, gt=1, description="ASHA's halving rate.")


class Tuning(ApiModel):
    """Hyper-parameter search with Ray Tune."""

    num_samples: int = Field(1, ge=1, le=10000, description="Trials to run.")
    search_space: dict[str, SearchDimension] = Field(
        default_factory=dict, description="Hyper-parameter name -> range.", json_schema_extra={"maxProperties": 50}
    )
    algorithm: Literal["random", "grid", "optuna", "hyperopt"] = Field("random", description="Search algorithm.")
    scheduler: Scheduler = Field(default_factory=Scheduler, description="Early stopping.")
    metric: Text | None = Field(None, description="Metric to optimise; the project objective's by default.")
    mode: Literal["max", "min"] | None = Field(None, description="Direction; the project objective's by default.")
    max_concurrent_trials: int = Field(1, ge=1, le=64, description="Trials running at once.")


class Distribution(ApiModel):
    """How many Ray workers train, and what each gets."""

    workers: int = Field(1, ge=1, le=256, description="Ray Train workers.")
    cpu_per_worker: float = Field(1, gt=0, description="CPUs per worker.")
    gpu_per_worker: int = Field(0, ge=0, le=8, description="GPUs per worker.")
    memory_per_worker: Quantity = Field("2Gi", description="Memory per worker.")


class Gates(ApiModel):
    """What a model must achieve to be promoted; a job that misses a gate succeeds but is not eligible."""

    min_metric: float | None = Field(None, description="Smallest (or largest, when minimising) metric allowed.")
    min_lift_over_champion: float | None = Field(
        None, description="Required improvement over the champion on the same test rows (absolute)."
    )
    min_lift_over_baseline: float | None = Field(0.0, description="Required improvement over the zero-rule model.")


class Evaluation(ApiModel):
    """Offline evaluation on the held-out test rows."""

    baselines: list[Literal["zeroRule", "random", "champion"]] = Field(
        default_factory=lambda: ["zeroRule", "random", "champion"],
        description="Baselines scored beside the model.", json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    gates: Gates = Field(default_factory=Gates, description="Promotion gates.")
    slices: list[Text] = Field(default_factory=list, max_length=20, description="Columns to report metrics per value.")
    calibration: bool = Field(True, description="Report Brier score and expected calibration error.")


class Output(ApiModel):
    """What the job produces."""

    model_name: Name = Field(description="Model name; versions are stored under it and never overwritten.")


class TrainingJobSpec(ApiModel):
    """Desired state of a TrainingJob. Immutable once the job has started."""

    # A run is a record: its spec must say what actually ran. Change means a new TrainingJob.
    model_config = validations({
        "rule": "self == oldSelf",
        "message": "a TrainingJob's spec is immutable once created; create a new TrainingJob instead",
    })

    project: Name = Field(description="The MLProject this job belongs to.")
    data: Data = Field(description="Training data.")
    validation: Validation = Field(default_factory=Validation, description="Data validation rules.")
    model: Model = Field(description="Learner and fixed parameters.")
    tuning: Tuning | None = Field(None, description="Hyper-parameter search; a single fit when omitted.")
    distribution: Distribution = Field(default_factory=Distribution, description="Ray workers.")
    evaluation: Evaluation = Field(default_factory=Evaluation, description="Baselines, gates, slices.")
    output: Output = Field(description="Produced model.")
    image: Text | None = Field(None, description="Runtime image; the project's default when omitted.")
    active_deadline: PositiveDuration = Field("6h", description="Longest the job may run before it is failed.")
    backoff_limit: int = Field(0, ge=0, le=10, description="Retries of the training pod on failure.")


class Trial(ApiModel):
    """The best trial found."""

    config: FreeForm = Field(default_factory=dict, description="Hyper-parameters of the best trial.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Its validation metrics.")


class Trials(ApiModel):
    """Progress of the search."""

    total: int = Field(0, description="Trials planned.")
    finished: int = Field(0, description="Trials finished (including early-stopped).")
    stopped_early: int | None = Field(None, description="Trials the scheduler stopped early (ASHA).")
    best: Trial | None = Field(None, description="Best trial so far.")


class ProducedModel(ApiModel):
    """The model version the job wrote."""

    name: str = Field(description="Model name.")
    version: str = Field(description="Immutable version id.")
    uri: str = Field(description="Where it was exported.")


class GateResult(ApiModel):
    """One gate and how the model did."""

    name: str = Field(description="Gate name.")
    threshold: float = Field(description="Required value.")
    value: float | None = Field(None, description="Measured value.")
    passed: bool = Field(description="Whether the gate passed.")


class SliceMetrics(ApiModel):
    """Metrics on the rows where one column has one value."""

    column: str = Field(description="Slice column.")
    value: str = Field(description="Slice value.")
    rows: int = Field(description="Test rows in the slice.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Metrics on those rows.")


class Lineage(ApiModel):
    """Everything needed to reproduce the model."""

    data_fingerprint: str | None = Field(None, description="Hash of the training data.")
    feature_refs: list[str] = Field(default_factory=list, description="Features used.")
    image: str | None = Field(None, description="Image that trained it.")
    params: FreeForm = Field(default_factory=dict, description="Final hyper-parameters.")
    start_time: datetime | None = Field(None, description="Training start.")
    end_time: datetime | None = Field(None, description="Training end.")
    rows: dict[str, int] = Field(default_factory=dict, description="Rows per split: train, validation, test.")
    hosts: list[str] = Field(default_factory=list, description="Where data-parallel training ran: the hosts (pods, "
                             "on Kubernetes) of its Ray Train workers, sorted. Empty for one-process training.")


class Workload(ApiModel):
    """The object that runs the training."""

    kind: Literal["RayJob", "Job"] = Field(description="RayJob when KubeRay is installed, else a batch Job.")
    name: str = Field(description="Its name, in the job's namespace.")


class TrainingJobStatus(StatusBase):
    """Observed state of a TrainingJob."""

    phase: Literal["Pending", "ValidatingData", "Training", "Evaluating", "Succeeded", "Failed"] | None = Field(
        None, description="Pending, ValidatingData, Training, Evaluating, Succeeded or Failed."
    )
    workload: Workload | None = Field(None, description="The RayJob or Job running the training.")
    start_time: datetime | None = Field(None, description="When the workload was created.")
    completion_time: datetime | None = Field(None, description="When the job finished.")
    trials: Trials | None = Field(None, description="Search progress.")
    model: ProducedModel | None = Field(None, description="The model version produced.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Test metrics of the model.")
    baselines: dict[str, dict[str, float]] = Field(default_factory=dict, description="Test metrics per baseline.")
    gates: list[GateResult] = Field(default_factory=list, description="Gate results.")
    gates_passed: bool | None = Field(None, description="True when every gate passed: eligible for promotion.")
    slices: list[SliceMetrics] = Field(default_factory=list, description="Per-slice metrics.")
    lineage: Lineage | None = Field(None, description="Reproducibility record.")
    spec_hash: str | None = Field(None, description="Hash of the spec the job started with (immutability).")
    result: FreeForm | None = Field(None, description="Raw result written by the training workload.")

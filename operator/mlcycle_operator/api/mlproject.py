"""MLProject: the unit of ownership — objective, storage, feature store, defaults, retraining policy."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import (
    STORAGE_URI_PATTERN,
    ApiModel,
    Duration,
    ObjectName,
    Quantity,
    Resources,
    StatusBase,
    Text,
    validations,
)

# A CronJob schedule: five fields (minute hour day-of-month month day-of-week), or a macro such as @hourly.
CRON_PATTERN = r"^(@(annually|yearly|monthly|weekly|daily|hourly)|([-0-9*?/,A-Za-z]+ +){4}[-0-9*?/,A-Za-z]+)$"


class ObjectiveMetric(ApiModel):
    """The model metric that decides whether a model is good enough, written before any model exists."""

    name: Text = Field(description="Metric name as the trainer reports it, e.g. roc_auc, rmse, f1.")
    direction: Literal["maximize", "minimize"] = Field("maximize", description="Whether higher or lower is better.")
    threshold: float | None = Field(None, description="The value a model must reach to count as a success.")


class Objective(ApiModel):
    """What the project is for: the business metric and the model metric that stands in for it."""

    business_metric: Text = Field(description="The business outcome the model serves, in words (e.g. churn rate).")
    metric: ObjectiveMetric = Field(description="The model metric optimised and gated on.")


class PvcStorage(ApiModel):
    """The PersistentVolumeClaim created when storage is pvc://."""

    size: Quantity = Field("10Gi", description="Requested capacity.")
    storage_class_name: ObjectName | None = Field(None, description="StorageClass; the cluster default when omitted.")
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany"] = Field(
        "ReadWriteMany", description="ReadWriteMany lets training and serving pods on different nodes share it."
    )


class Storage(ApiModel):
    """Where models and artifacts live: <uri>/<project>/models/<name>/<version>."""

    uri: str = Field(
        pattern=STORAGE_URI_PATTERN,
        description="s3://bucket/prefix, pvc://claim-name/path or file:///path (single-node and tests).",
    )
    pvc: PvcStorage | None = Field(None, description="Claim settings; only for pvc:// URIs.")
    secret_name: ObjectName | None = Field(
        None, description="Secret with credentials for s3:// (AWS_ACCESS_KEY_ID, ..., AWS_ENDPOINT_URL)."
    )

    model_config = validations({"rule": "!has(self.pvc) || self.uri.startsWith('pvc://')",
                                "message": "pvc settings apply only to pvc:// storage", "fieldPath": ".pvc"})


class OfflineStore(ApiModel):
    """Feast offline store: where historical features are read for training."""

    type: Literal["file", "dask"] = Field("file", description="Feast offline store type.")
    path: str | None = Field(None, description="Base path of the Parquet sources (file store).")


class OnlineStore(ApiModel):
    """Feast online store: where the latest features are served from."""

    type: Literal["sqlite", "redis"] = Field("sqlite", description="Feast online store type.")
    path: str | None = Field(None, description="SQLite database path (sqlite).")
    connection_string: str | None = Field(None, description="host:port[,password=...] (redis).")

    model_config = validations(
        {"rule": "self.type != 'redis' || has(self.connectionString)",
         "message": "a redis online store needs connectionString", "fieldPath": ".connectionString"},
        {"rule": "self.type != 'sqlite' || !has(self.connectionString)",
         "message": "connectionString is for redis only; a sqlite online store takes path",
         "fieldPath": ".connectionString"},
    )


class Materialization(ApiModel):
    """How often the online store is refreshed from the offline store."""

    enabled: bool = Field(True, description="Create the materialization CronJob.")
    schedule: str = Field(
        "0 * * * *", pattern=CRON_PATTERN, description="Cron schedule of `feast materialize-incremental`."
    )


class FeatureStore(ApiModel):
    """The project's Feast feature store, rendered into feature_store.yaml."""

    project: str = Field(pattern=r"^[A-Za-z0-9_]+$", description="Feast project name (letters, digits, _).")
    registry: Text = Field(description="Registry path or URI (e.g. s3://bucket/registry.db).")
    offline_store: OfflineStore = Field(default_factory=OfflineStore, description="Offline store settings.")
    online_store: OnlineStore = Field(default_factory=OnlineStore, description="Online store settings.")
    materialization: Materialization = Field(
        default_factory=Materialization, description="Refresh schedule of the online store."
    )


class ProjectDefaults(ApiModel):
    """Defaults for workloads of this project that do not set their own."""

    image: Text | None = Field(None, description="Runtime image for training, serving and monitoring.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="Pull policy for that image."
    )
    resources: Resources = Field(default_factory=Resources, description="Default resources per pod.")


class RetrainingPolicy(ApiModel):
    """Limits on automatic retraining, so a flapping monitor cannot start a training storm."""

    cooldown: Duration = Field("6h", description="Minimum time between two automatic retrainings.")
    max_concurrent: int = Field(1, ge=1, le=20, description="Most automatic TrainingJobs running at once.")
    daily_budget: int = Field(4, ge=0, le=100, description="Most automatic TrainingJobs started per day.")


class MLProjectSpec(ApiModel):
    """Desired state of an MLProject."""

    objective: Objective = Field(description="The business and model objective.")
    owners: list[Text] = Field(min_length=1, max_length=20, description="People or teams accountable (emails).")
    storage: Storage = Field(description="Where models and artifacts are stored.")
    feature_store: FeatureStore | None = Field(
        None, description="The Feast feature store, when features come from one."
    )
    defaults: ProjectDefaults = Field(default_factory=ProjectDefaults, description="Workload defaults.")
    retraining: RetrainingPolicy = Field(default_factory=RetrainingPolicy, description="Automatic retraining limits.")


class Champion(ApiModel):
    """The model currently serving for the project (the stable version of its deployments)."""

    model: str = Field(description="Model name.")
    version: str = Field(description="Model version.")
    uri: str | None = Field(None, description="Where the version is stored.")
    training_job: str | None = Field(None, description="The TrainingJob that produced it.")


class ProjectCounts(ApiModel):
    """How many of each kind reference this project."""

    training_jobs: int = Field(0, description="TrainingJobs of the project.")
    running_training_jobs: int = Field(0, description="TrainingJobs not yet finished.")
    model_deployments: int = Field(0, description="ModelDeployments of the project.")
    drift_monitors: int = Field(0, description="DriftMonitors of the project.")


class StorageStatus(ApiModel):
    """The model store's claim as the cluster has it (pvc:// storage)."""

    claim: str = Field(description="The PersistentVolumeClaim's name.")
    phase: str = Field(description="The claim's phase: Pending, Bound or Lost.")
    message: str | None = Field(None, description="Its volume, or why it is not bound (the provisioner's words).")


class MLProjectStatus(StatusBase):
    """Observed state of an MLProject."""

    phase: Literal["Pending", "Ready", "Degraded"] | None = Field(None, description="Pending, Ready or Degraded.")
    counts: ProjectCounts | None = Field(None, description="Resources that belong to the project.")
    champion: Champion | None = Field(None, description="The model in service, if any.")
    service_account: str | None = Field(None, description="ServiceAccount the project's workloads run as.")
    storage: StorageStatus | None = Field(None, description="The model store's claim, for pvc:// storage.")

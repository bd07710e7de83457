"""DriftMonitor: watches one ModelDeployment for data, prediction and concept drift, and retrains."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, WithJsonSchema

from .common import (
    ApiModel,
    Duration,
    FreeForm,
    Name,
    PositiveDuration,
    Resources,
    StatusBase,
    Text,
    pvc_claim_rule,
    validations,
)
from .trainingjob import TrainingJobSpec


def _training_job_spec(template: dict[str, Any]) -> dict[str, Any]:
    """The template as written, once it has been read as a TrainingJob spec (what the API server checks too)."""
    TrainingJobSpec.model_validate(template)
    return template


# A TrainingJob spec kept as the user wrote it: the retraining job is created from exactly this. The CRD
# embeds TrainingJob's schema here (see crd.py), so the API server refuses a template no TrainingJob could have.
TrainingJobTemplate = Annotated[
    dict[str, Any],
    AfterValidator(_training_job_spec),
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


class Reference(ApiModel):
    """The distribution drift is measured against."""

    source: Literal["TrainingJob", "Uri"] = Field(
        "TrainingJob", description="The training data of the model in service, or a Parquet URI."
    )
    uri: Text | None = Field(None, description="Reference data (source Uri).")

    model_config = validations({
        "rule": "(self.source == 'Uri') == has(self.uri)",
        "message": "uri is required for source Uri and only allowed there", "fieldPath": ".uri",
    }, pvc_claim_rule("uri"))


class DelayedLabels(ApiModel):
    """Ground truth that arrives later, for measuring performance (concept drift)."""

    uri: Text = Field(description="Parquet with entity keys, event time and label.")
    delay: Duration = Field("24h", description="How late labels arrive.")
    metric: Text | None = Field(None, description="Metric to track; the project objective's by default.")
    min_drop: float = Field(0.05, ge=0, description="Drop from the training metric that counts as drift.")

    model_config = validations(pvc_claim_rule("uri"))


class DriftTest(ApiModel):
    """The statistic and threshold for one type of feature."""

    method: Literal["psi", "ks", "wasserstein", "jensenShannon", "chiSquared"] = Field(description="Statistic.")
    threshold: float = Field(
        gt=0, description="Score above which (p-value below which, for ks/chiSquared) a feature drifted."
    )

    model_config = validations({
        "rule": "!(self.method in ['ks', 'chiSquared']) || self.threshold <= 1.0",
        "message": "ks and chiSquared thresholds are p-values: at most 1", "fieldPath": ".threshold",
    })


class DriftTests(ApiModel):
    """Tests per feature type."""

    numeric: DriftTest = Field(
        default_factory=lambda: DriftTest(method="psi", threshold=0.2), description="For numeric features."
    )
    categorical: DriftTest = Field(
        default_factory=lambda: DriftTest(method="chiSquared", threshold=0.01), description="For categorical features."
    )

    model_config = validations(
        {"rule": "self.numeric.method in ['psi', 'ks', 'wasserstein', 'jensenShannon']",
         "message": "numeric tests are psi, ks, wasserstein or jensenShannon", "fieldPath": ".numeric.method"},
        {"rule": "self.categorical.method in ['chiSquared', 'psi', 'jensenShannon']",
         "message": "categorical tests are chiSquared, psi or jensenShannon", "fieldPath": ".categorical.method"},
    )


class Alerting(ApiModel):
    """Alerts on drift."""

    enabled: bool = Field(
        True, description="Create a PrometheusRule when its CRD exists (metrics are always exported)."
    )
    severity: Literal["info", "warning", "critical"] = Field("warning", description="Alert severity label.")
    for_: Duration = Field("10m", alias="for", description="How long drift must hold before the alert fires.")


class Retrain(ApiModel):
    """Start a TrainingJob on drift: from a template, or cloned from the lineage of the model in service."""

    enabled: bool = Field(True, description="Retrain on drift.")
    template: TrainingJobTemplate | None = Field(
        None, description="TrainingJob spec to use; cloned from lineage when omitted."
    )
    cooldown: Duration = Field("6h", description="Minimum time between two retrainings started by this monitor.")
    max_per_day: int = Field(2, ge=0, le=50, description="Most retrainings started per day.")
    min_drifted_features: int = Field(1, ge=1, description="Drifted features needed to retrain.")


class Actions(ApiModel):
    """What the monitor does when it detects drift."""

    retrain: Retrain | None = Field(None, description="Retrain on drift; report only when omitted.")


class MonitorAutoscaling(ApiModel):
    """Replicas of the monitor workload."""

    min_replicas: int = Field(1, ge=1, description="Fewest replicas.")
    max_replicas: int = Field(3, ge=1, le=50, description="Most replicas.")

    model_config = validations({
        "rule": "self.minReplicas <= self.maxReplicas",
        "message": "minReplicas must not exceed maxReplicas", "fieldPath": ".minReplicas",
    })


class DriftMonitorSpec(ApiModel):
    """Desired state of a DriftMonitor."""

    deployment: Name = Field(description="The ModelDeployment watched (same namespace).")
    reference: Reference = Field(default_factory=Reference, description="Reference distribution.")
    features: list[Text] = Field(default_factory=list, max_length=500, description="Features to test; all when empty.")
    prediction: bool = Field(True, description="Also test the distribution of predictions.")
    labels: DelayedLabels | None = Field(None, description="Delayed labels for concept drift.")
    tests: DriftTests = Field(default_factory=DriftTests, description="Statistic and threshold per feature type.")
    window: PositiveDuration = Field("1h", description="Window of live traffic compared with the reference.")
    schedule: PositiveDuration = Field("5m", description="How often the monitor computes a report.")
    min_samples: int = Field(500, ge=1, description="Fewest requests in the window for a report to count.")
    alerting: Alerting = Field(default_factory=Alerting, description="Alerting.")
    actions: Actions = Field(default_factory=Actions, description="What to do on drift.")
    image: Text | None = Field(None, description="Runtime image; the project's default when omitted.")
    resources: Resources = Field(default_factory=lambda: Resources(cpu="250m", memory="512Mi"), description="Per pod.")
    autoscaling: MonitorAutoscaling = Field(default_factory=MonitorAutoscaling, description="Monitor replicas.")


class FeatureDrift(ApiModel):
    """One feature's drift score in a report."""

    name: str = Field(description="Feature (or 'prediction').")
    method: str = Field(description="Statistic used.")
    score: float = Field(description="Measured score (p-value for ks/chiSquared).")
    threshold: float = Field(description="Threshold.")
    drifted: bool = Field(description="Whether it crossed the threshold.")


class DriftReport(ApiModel):
    """The monitor's last computation."""

    time: datetime = Field(description="When it was computed.")
    window: str = Field(description="Window covered.")
    samples: int = Field(description="Requests in the window.")
    version: str | None = Field(None, description="Model version in service.")
    features: list[FeatureDrift] = Field(default_factory=list, description="Per-feature results.")
    drifted: bool = Field(description="Whether drift was detected.")
    drifted_features: list[str] = Field(default_factory=list, description="Names of drifted features.")


class LastRetrain(ApiModel):
    """The last retraining this monitor started."""

    time: datetime = Field(description="When it was started.")
    training_job: str = Field(description="The TrainingJob created.")
    reason: str = Field(description="Why (drifted features and scores).")


class DriftMonitorStatus(StatusBase):
    """Observed state of a DriftMonitor."""

    phase: Literal["Pending", "Monitoring", "Drifted", "Degraded"] | None = Field(
        None, description="Pending, Monitoring, Drifted or Degraded."
    )
    last_report: DriftReport | None = Field(None, description="Last accepted report.")
    last_retrain: LastRetrain | None = Field(None, description="Last retraining started.")
    retrains_today: int = Field(0, description="Retrainings started in the current UTC day.")
    retrain_day: str | None = Field(None, description="The UTC day retrainsToday counts (YYYY-MM-DD).")
    report: FreeForm | None = Field(None, description="Raw report written by the monitor workload.")

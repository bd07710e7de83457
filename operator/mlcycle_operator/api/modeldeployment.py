"""ModelDeployment: online serving of a model, and how new versions are rolled out."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from .common import (
    STORAGE_URI_PATTERN,
    ApiModel,
    Duration,
    LabelSelector,
    Name,
    PositiveDuration,
    Quantity,
    Resources,
    StatusBase,
    Text,
    validations,
)


class ModelTrack(ApiModel):
    """Follow the newest TrainingJob that passed its gates — what lets the closed loop roll out new versions."""

    selector: LabelSelector = Field(
        default_factory=LabelSelector, description="TrainingJobs to consider (same namespace and project)."
    )


class ModelRef(ApiModel):
    """Which model to serve: pinned by version or URI, or tracked. Exactly one of version, uri, track."""

    name: Name = Field(description="Model name (TrainingJob spec.output.modelName).")
    # A version is a directory under <storage>/<project>/models/<name>/: one path segment, never . or ..
    version: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=128,
                                description="Pinned version in the project's storage.")
    uri: str | None = Field(None, pattern=STORAGE_URI_PATTERN, description="Pinned model URI (s3://, pvc://, file://).")
    track: ModelTrack | None = Field(None, description="Track gated TrainingJobs.")

    model_config = validations({
        "rule": "[has(self.version), has(self.uri), has(self.track)].filter(x, x).size() == 1",
        "message": "set exactly one of model.version, model.uri, model.track",
    })


class Batching(ApiModel):
    """Adaptive batching inside each server worker: concurrent requests scored as one matrix."""

    enabled: bool = Field(True, description="Batch concurrent requests (a quiet server scores each at once).")
    max_batch_size: int = Field(32, ge=1, le=10000, description="Most rows in a batch; larger requests are "
                                                               "scored on their own. 1 turns batching off.")
    max_latency_ms: int = Field(5, ge=1, le=60000, description="Longest a request waits for a batch to fill.")


class Autoscaling(ApiModel):
    """HorizontalPodAutoscaler of each version's Deployment."""

    enabled: bool = Field(False, description="Create an HPA.")
    min_replicas: int = Field(1, ge=1, description="Fewest replicas.")
    max_replicas: int = Field(4, ge=1, le=1000, description="Most replicas.")
    target_cpu_utilization: int | None = Field(70, ge=1, le=100, description="Average CPU % to hold.")
    target_requests_per_second: int | None = Field(
        None, ge=1, description="Requests per second per replica to hold (needs a custom-metrics adapter)."
    )
    scale_down_stabilization: Duration = Field(
        "5m", description="How long the load must stay below the target before replicas are removed (the HPA's "
                          "behavior.scaleDown.stabilizationWindowSeconds; Kubernetes' own default is 5m).")

    model_config = validations({
        "rule": "self.minReplicas <= self.maxReplicas",
        "message": "minReplicas must not exceed maxReplicas", "fieldPath": ".minReplicas",
    })


class OnlineFeatures(ApiModel):
    """Features fetched from Feast for requests that carry only entity keys."""

    feature_service: Text = Field(description="Feast feature service to read.")
    entity_keys: list[Text] = Field(min_length=1, description="Request fields that are entity keys.")


class Serving(ApiModel):
    """How each model version is served."""

    runtime: Literal["bentoml"] = Field("bentoml", description="Serving runtime.")
    image: Text | None = Field(None, description="Runtime image; the project's default when omitted.")
    replicas: int = Field(1, ge=0, le=1000, description="Replicas per version when autoscaling is off.")
    resources: Resources = Field(default_factory=Resources, description="Per replica.")
    batching: Batching = Field(default_factory=Batching, description="Adaptive batching.")
    autoscaling: Autoscaling = Field(default_factory=Autoscaling, description="Autoscaling.")
    online_features: OnlineFeatures | None = Field(None, description="Online features from Feast.")
    max_request_size: Quantity = Field(
        "1Mi", description="Largest request body the router and each model server accept, in bytes (a quantity: "
        "512Ki, 4Mi); a larger one is answered 413 before it is read in full.")


class CanaryStep(ApiModel):
    """Send this share of traffic to the candidate, then hold."""

    weight: int = Field(ge=0, le=100, description="Percent of traffic to the candidate.")
    pause: Duration = Field("1m", description="How long to hold (analysis runs during the hold).")


class AnalysisMetric(ApiModel):
    """One measurement that decides whether the candidate is healthy."""

    name: Text = Field(description="Name shown in status.")
    type: Literal["errorRate", "latencyP99", "predictionDrift", "promql"] = Field(
        description="Built-in measurement, or promql for your own query."
    )
    query: Text | None = Field(None, description="PromQL returning one number; {{version}}, {{namespace}} and "
                                                "{{deployment}} are substituted.")
    threshold: float = Field(description="Limit the value is compared against.")
    comparison: Literal["lessThan", "greaterThan"] = Field("lessThan", description="Healthy when value < or > limit.")

    model_config = validations({
        "rule": "(self.type == 'promql') == has(self.query)",
        "message": "query is required for type promql and only allowed there", "fieldPath": ".query",
    })


class Analysis(ApiModel):
    """Automated analysis of the candidate on live metrics (Prometheus)."""

    interval: PositiveDuration = Field("1m", description="Time between analysis runs.")
    failure_limit: int = Field(2, ge=1, le=100, description="Failed runs after which the candidate is rolled back.")
    metrics: list[AnalysisMetric] = Field(
        default_factory=list, max_length=20, description="Measurements; error rate and p99 latency when empty."
    )


class Canary(ApiModel):
    """A canary rollout in steps of traffic weight."""

    steps: list[CanaryStep] = Field(
        default_factory=lambda: [CanaryStep(weight=10), CanaryStep(weight=50)],
        min_length=1, max_length=20, description="Steps; weights strictly increasing, the last reaches ≤ 100.",
    )
    analysis: Analysis = Field(default_factory=Analysis, description="Analysis during every step.")

    model_config = validations({
        # isSorted() allows equal neighbours; exists_one() rules them out.
        "rule": "self.steps.map(s, s.weight).isSorted()"
                " && self.steps.all(a, self.steps.exists_one(b, b.weight == a.weight))",
        "message": "canary step weights must be strictly increasing", "fieldPath": ".steps",
    })


class Shadow(ApiModel):
    """Mirror traffic to the candidate and compare its answers with the stable model's."""

    percent: int = Field(10, ge=1, le=100, description="Percent of requests mirrored.")
    duration: Duration = Field("10m", description="How long to compare.")
    min_agreement: float = Field(0.95, ge=0, le=1, description="Share of answers that must agree.")
    max_latency_ratio: float = Field(1.5, gt=0, description="Candidate p99 / stable p99 allowed.")
    min_samples: int = Field(100, ge=1, description="Mirrored requests needed before deciding.")
    on_success: Literal["Promote", "Report"] = Field("Promote", description="Promote, or only report.")


class BlueGreen(ApiModel):
    """Bring the candidate up beside the stable version, then switch all traffic at once."""

    preview_duration: Duration = Field("5m", description="How long the candidate runs before the switch.")
    analysis: Analysis = Field(default_factory=Analysis, description="Analysis during the preview.")


class RouterService(ApiModel):
    """The router's Service: the deployment's stable endpoint."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(
        "ClusterIP", description="ClusterIP (in-cluster only), NodePort or LoadBalancer.")
    node_port: int | None = Field(
        None, ge=30000, le=32767, description="Fixed node port (NodePort or LoadBalancer); the cluster picks one "
        "when omitted. The kind cluster of kind-config.yaml maps 30080 to localhost:8080.")

    model_config = validations({
        "rule": "!has(self.nodePort) || self.type != 'ClusterIP'",
        "message": "nodePort needs type NodePort or LoadBalancer", "fieldPath": ".nodePort",
    })


class Strategy(ApiModel):
    """How a new version replaces the stable one."""

    type: Literal["Canary", "Shadow", "BlueGreen", "Recreate"] = Field("Canary", description="Rollout strategy.")
    canary: Canary | None = Field(None, description="Canary settings (type Canary).")
    shadow: Shadow | None = Field(None, description="Shadow settings (type Shadow).")
    blue_green: BlueGreen | None = Field(None, description="Blue-green settings (type BlueGreen).")
    scale_down_delay: Duration = Field(
        "30s", description="How long the server of a version that left the routing table (promoted over or rolled "
        "back) keeps running, so requests the router sent it before it saw the new table still get an answer.")

    model_config = validations(
        {"rule": "!has(self.canary) || self.type == 'Canary'", "message": "canary settings need type Canary",
         "fieldPath": ".canary"},
        {"rule": "!has(self.shadow) || self.type == 'Shadow'", "message": "shadow settings need type Shadow",
         "fieldPath": ".shadow"},
        {"rule": "!has(self.blueGreen) || self.type == 'BlueGreen'",
         "message": "blueGreen settings need type BlueGreen", "fieldPath": ".blueGreen"},
    )


class PredictionLogging(ApiModel):
    """A sample of answered requests written by the router as Parquet, for labels that arrive later to be joined
    to: time, version, role, request id, entity keys, the record and the prediction, partitioned by deployment and
    hour. Off unless set; written off the request path (slow or failed storage drops rows, counted, never an
    answer)."""

    sample_rate: float = Field(1.0, gt=0, le=1, description="Share of answered requests logged, 0 < rate <= 1.")
    uri: str | None = Field(None, pattern=STORAGE_URI_PATTERN,
                            description="Where the log is written (s3://, pvc:// on the project's claim, file://); "
                                        "default: the project's storage under predictions/.")
    flush_interval: PositiveDuration = Field("60s", description="How often buffered rows are written.")
    entity_keys: list[Text] = Field(default_factory=list, max_length=16,
                                    description="Record fields written as their own columns, to join labels on; "
                                                "default: serving.onlineFeatures.entityKeys.")


class ModelDeploymentSpec(ApiModel):
    """Desired state of a ModelDeployment."""

    project: Name = Field(description="The MLProject this deployment belongs to.")
    model: ModelRef = Field(description="The model to serve.")
    serving: Serving = Field(default_factory=Serving, description="Serving settings per version.")
    strategy: Strategy = Field(default_factory=Strategy, description="Rollout strategy for new versions.")
    service: RouterService = Field(default_factory=RouterService,
                                   description="How the router's Service is exposed.")
    service_monitor: bool = Field(False, description="Create a ServiceMonitor when its CRD exists.")
    logging: PredictionLogging | None = Field(None, description="Log a sample of predictions (off by default).")


class VersionTraffic(ApiModel):
    """Share of traffic one version receives."""

    version: str = Field(description="Model version.")
    weight: int = Field(ge=0, le=100, description="Percent of requests.")
    role: Literal["stable", "candidate"] = Field(description="Its role in the rollout.")
    shadow_percent: int = Field(0, ge=0, le=100, description="Percent of requests mirrored to it.")


class MetricMeasurement(ApiModel):
    """One metric of one analysis run."""

    name: str = Field(description="Metric name.")
    value: float | None = Field(None, description="Measured value; empty when it could not be measured.")
    threshold: float = Field(description="Limit.")
    passed: bool | None = Field(None, description="Whether it was within the limit; empty when not measured.")


class AnalysisRun(ApiModel):
    """One analysis of the candidate: what was measured and the verdict."""

    time: datetime = Field(description="When it ran.")
    step: int = Field(description="Rollout step it ran in.")
    verdict: Literal["Pass", "Fail", "Inconclusive"] = Field(description="Pass, Fail, or Inconclusive.")
    measurements: list[MetricMeasurement] = Field(default_factory=list, description="Measured values.")
    message: str = Field("", description="Why, in words.")


class Rollout(ApiModel):
    """Progress of the current rollout."""

    candidate_version: str | None = Field(None, description="Version being rolled out.")
    step: int = Field(0, description="Index of the current step.")
    step_started_at: datetime | None = Field(None, description="When the current step began.")
    failures: int = Field(0, description="Failed analysis runs so far.")
    analysis_runs: list[AnalysisRun] = Field(default_factory=list, description="Analysis runs, newest last.")
    started_at: datetime | None = Field(None, description="When the rollout began.")


class HistoryEntry(ApiModel):
    """One past rollout outcome."""

    time: datetime = Field(description="When it ended.")
    version: str = Field(description="The candidate version.")
    outcome: Literal["Promoted", "RolledBack", "Superseded"] = Field(description="What happened to it.")
    reason: str = Field("", description="Why.")
    analysis_runs: list[AnalysisRun] = Field(
        default_factory=list, description="The rollout's last analysis runs (at most 10), the deciding one last.")


class ModelDeploymentStatus(StatusBase):
    """Observed state of a ModelDeployment."""

    phase: Literal["Pending", "Progressing", "Available", "Degraded"] | None = Field(
        None, description="Pending, Progressing (a rollout is under way), Available or Degraded."
    )
    stable_version: str | None = Field(None, description="The version serving most traffic.")
    candidate_version: str | None = Field(None, description="The version being rolled out.")
    traffic: list[VersionTraffic] = Field(default_factory=list, description="Traffic per version.")
    traffic_summary: str | None = Field(None, description="Traffic in one line, e.g. v3=90 v4=10.")
    rollout: Rollout | None = Field(None, description="Current rollout.")
    history: list[HistoryEntry] = Field(default_factory=list, description="Past rollouts, newest last (last 20).")
    endpoint: str | None = Field(None, description="In-cluster URL of the router.")
    ready_replicas: int = Field(0, description="Ready serving replicas over all versions.")
    desired_replicas: int = Field(0, description="Desired serving replicas over all versions.")
    training_job: str | None = Field(None, description="TrainingJob that produced the stable version.")
    model_uri: str | None = Field(None, description="URI of the stable version.")
    retiring: list[str] = Field(
        default_factory=list, description="Versions out of the routing table whose servers are still running "
        "until spec.strategy.scaleDownDelay has passed; removed after that.")

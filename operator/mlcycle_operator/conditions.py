"""Condition types as named constants, the reasons as one enum, and the one function that sets a condition."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

# Types (kubebuilder convention: Available/Progressing/Degraded, plus per-part ones).
READY = "Ready"  # the object does what it is for: project provisioned, model served, monitor running
PROGRESSING = "Progressing"  # work is under way: training, rollout, first reconcile
DEGRADED = "Degraded"  # something is wrong that a person may need to act on
DATA_VALID = "DataValid"  # training data passed (or failed) validation
GATES_PASSED = "GatesPassed"  # the trained model passed its evaluation gates
DRIFT_DETECTED = "DriftDetected"  # the last accepted drift report found drift


class Reason(StrEnum):
    """Every reason the operator writes into a condition, an Event or a retrain decision, outside the rollout's
    own (rollout.Reason). One CamelCase word each, stable: alerts and scripts match on them, docs/*.md explains
    each. A StrEnum, so status and Events carry the plain string."""

    # Any kind
    RECONCILED = "Reconciled"  # Ready True: the object does what it is for; an MLProject's phase-change Event
    INVALID_SPEC = "InvalidSpec"  # Degraded True: the API models refuse the spec (fails permanently)
    PROJECT_NOT_FOUND = "ProjectNotFound"  # the MLProject named does not exist; also a retrain decision
    CHILDREN_APPLIED = "ChildrenApplied"  # Normal Event: children created or updated
    CHILDREN_REMOVED = "ChildrenRemoved"  # Normal Event: children no longer desired were deleted
    # Pods and autoscalers (TrainingJob and ModelDeployment): the condition lasts as long as they show it
    IMAGE_PULL_FAILED = "ImagePullFailed"
    UNSCHEDULABLE = "Unschedulable"
    OOM_KILLED = "OOMKilled"
    AUTOSCALING_INACTIVE = "AutoscalingInactive"  # an autoscaler cannot scale (most often: no metrics-server)
    # MLProject
    STORAGE_NOT_BOUND = "StorageNotBound"  # the model-store claim is not bound, or lost its volume
    STORAGE_SPEC_IMMUTABLE = "StorageSpecImmutable"  # spec.storage.pvc asks what the existing claim cannot take
    STORAGE_RESIZE_REFUSED = "StorageResizeRefused"  # Warning Event: the API server refused a change of the claim
    # TrainingJob
    WORKLOAD_CREATED = "WorkloadCreated"  # Progressing True: the RayJob or Job exists, the trainer has not reported
    WORKLOAD_REFUSED = "WorkloadRefused"  # the API server refused the workload: the job fails at once
    PENDING = "Pending"  # Progressing True names the phase the job is in: this one and the next three
    VALIDATING_DATA = "ValidatingData"
    TRAINING = "Training"
    EVALUATING = "Evaluating"
    FINISHED = "Finished"  # Progressing False: the job reached Succeeded or Failed
    VALIDATED = "Validated"  # DataValid True
    BAD_DATA = "BadData"  # DataValid False, and Degraded: the data failed spec.validation
    GATES_PASSED = "GatesPassed"  # GatesPassed True
    GATES_FAILED = "GatesFailed"  # GatesPassed False
    DEADLINE_EXCEEDED = "DeadlineExceeded"  # training ran past spec.activeDeadline and was stopped
    TRAINING_FAILED = "TrainingFailed"  # the workload or the trainer failed (or exited without reporting)
    RECOVERED = "Recovered"  # Degraded False: an earlier problem went away
    PHASE_CHANGED = "PhaseChanged"  # Normal Event on every phase change
    SUCCEEDED = "Succeeded"  # Normal Event: the model was trained
    FAILED = "Failed"  # Warning Event: the job failed
    # BatchPrediction (also WorkloadCreated, WorkloadRefused, Pending, Finished, Succeeded, Failed, DeadlineExceeded,
    # NoModelYet and the pod reasons above)
    RUNNING = "Running"  # Progressing True: the scorer is reading and scoring rows
    SCHEDULED = "Scheduled"  # Ready True: the CronJob exists and starts runs on the schedule
    SCORING_FAILED = "ScoringFailed"  # a run failed: the scorer's error, a failed Job, or no report
    MODEL_RESOLVED = "ModelResolved"  # Normal Event: a tracked model's newest gated version scores from the next run
    # ModelDeployment (the rollout's own reasons are rollout.Reason)
    NO_MODEL_YET = "NoModelYet"  # Ready False: no version to serve (none passed its gates, or the pin is missing)
    WAITING_FOR_REPLICAS = "WaitingForReplicas"  # Ready False: the version to serve has no ready replica yet
    HEALTHY = "Healthy"  # Degraded False
    # DriftMonitor
    DEPLOYMENT_NOT_FOUND = "DeploymentNotFound"  # Ready False: the ModelDeployment named does not exist
    WAITING_FOR_MODEL = "WaitingForModel"  # Ready False: the deployment serves no model, nothing to compare with
    WAITING_FOR_MONITOR = "WaitingForMonitor"  # Ready False: the monitor Deployment is not available yet
    DRIFT_FOUND = "DriftFound"  # DriftDetected True, and its Warning Event
    NO_DRIFT = "NoDrift"  # DriftDetected False; also a retrain decision
    RETRAINING_STARTED = "RetrainingStarted"  # Normal Event: a retraining TrainingJob was created
    RETRAINING_IMPOSSIBLE = "RetrainingImpossible"  # Warning Event: no template and no TrainingJob to clone
    # Retrain decisions (retraining.decide); a skip on a drifted report is the Event Retraining<reason>
    DRIFT_DETECTED = "DriftDetected"  # start a retraining
    NOT_ENOUGH_SAMPLES = "NotEnoughSamples"  # fewer samples in the window than spec.minSamples
    REPORT_ONLY = "ReportOnly"  # retraining is not enabled for this monitor
    TOO_FEW_FEATURES = "TooFewFeatures"  # fewer drifted features than minDriftedFeatures
    COOLING_DOWN = "CoolingDown"  # the last retraining started within the cooldown
    DAILY_CAP_REACHED = "DailyCapReached"  # as many retrainings started today (UTC) as the cap allows
    TOO_MANY_RUNNING = "TooManyRunning"  # the project's maxConcurrent retrainings are still running


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def set_condition(conditions: list[dict[str, Any]], type_: str, status: bool | str, reason: str, message: str,
                  generation: int | None, at: datetime | None = None) -> list[dict[str, Any]]:
    """A new list with `type_` set; lastTransitionTime moves only when the status itself changes."""
    status_text = status if isinstance(status, str) else ("True" if status else "False")
    at = at or now()
    previous = next((c for c in conditions if c.get("type") == type_), None)
    changed = previous is None or previous.get("status") != status_text
    condition = {
        "type": type_,
        "status": status_text,
        "reason": reason,
        "message": message,
        "lastTransitionTime": (at.isoformat().replace("+00:00", "Z") if changed or not previous.get(
            "lastTransitionTime") else previous["lastTransitionTime"]),
        "observedGeneration": generation,
    }
    return [condition if c.get("type") == type_ else c for c in conditions] if previous else [*conditions, condition]


def get_condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def is_true(conditions: list[dict[str, Any]] | None, type_: str) -> bool:
    condition = get_condition(conditions, type_)
    return condition is not None and condition.get("status") == "True"

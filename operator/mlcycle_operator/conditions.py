"""Condition types and reasons, as named constants, and the one function that sets a condition."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

# Types (kubebuilder convention: Available/Progressing/Degraded, plus per-part ones).
READY = "Ready"  # the object does what it is for: project provisioned, model served, monitor running
PROGRESSING = "Progressing"  # work is under way: training, rollout, first reconcile
DEGRADED = "Degraded"  # something is wrong that a person may need to act on
DATA_VALID = "DataValid"  # training data passed (or failed) validation
GATES_PASSED = "GatesPassed"  # the trained model passed its evaluation gates
DRIFT_DETECTED = "DriftDetected"  # the last accepted drift report found drift

# Reasons: one CamelCase word each, stable so alerts and scripts can match on them.
RECONCILED = "Reconciled"
PROJECT_NOT_FOUND = "ProjectNotFound"
INVALID_SPEC = "InvalidSpec"
WORKLOAD_CREATED = "WorkloadCreated"
WORKLOAD_REFUSED = "WorkloadRefused"
WAITING_FOR_POD = "WaitingForPod"
IMAGE_PULL = "ImagePullFailed"
UNSCHEDULABLE = "Unschedulable"
OOM_KILLED = "OOMKilled"
DEADLINE_EXCEEDED = "DeadlineExceeded"
BAD_DATA = "BadData"
TRAINING_FAILED = "TrainingFailed"
TRAINING = "Training"
SUCCEEDED = "Succeeded"
NO_MODEL = "NoModelYet"
MODEL_NOT_FOUND = "ModelNotFound"
WAITING_FOR_REPLICAS = "WaitingForReplicas"
NO_DRIFT = "NoDrift"
DRIFT = "DriftFound"
NOT_ENOUGH_SAMPLES = "NotEnoughSamples"
DEPLOYMENT_NOT_FOUND = "DeploymentNotFound"
STORAGE_NOT_BOUND = "StorageNotBound"
STORAGE_IMMUTABLE = "StorageSpecImmutable"
AUTOSCALING_INACTIVE = "AutoscalingInactive"


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

"""An MLProject's model-store claim as status: what binds, what will not and why, what a claim cannot take
(no cluster)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mlcycle_operator import conditions as cond
from mlcycle_operator import storage

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def stamp(seconds: float = 0) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def claim(modes=("ReadWriteMany",), phase: str | None = "Pending", size: str = "10Gi", storage_class: str | None = None,
          volume: str | None = None) -> dict:
    spec: dict = {"accessModes": list(modes), "resources": {"requests": {"storage": size}}}
    if storage_class:
        spec["storageClassName"] = storage_class
    if volume:
        spec["volumeName"] = volume
    return {"metadata": {"name": "churn-models", "uid": "u1"}, "spec": spec,
            "status": {"phase": phase} if phase else {}}


def event(reason: str, message: str, type_: str = "Normal", at: float = 0) -> dict:
    return {"type": type_, "reason": reason, "message": message, "lastTimestamp": stamp(at)}


def test_a_bound_claim_names_its_volume_and_is_no_problem():
    status, problems = storage.observe_claim(claim(), claim(phase="Bound", volume="pvc-1"), [])
    assert status == {"claim": "churn-models", "phase": "Bound", "message": "bound to volume pvc-1 (ReadWriteMany)"}
    assert problems == []


def test_a_claim_waiting_for_its_first_consumer_is_pending_but_no_problem():
    status, problems = storage.observe_claim(claim(), claim(), [
        event("WaitForFirstConsumer", "waiting for first consumer to be created before binding")])
    assert status["phase"] == "Pending" and "WaitForFirstConsumer" in status["message"]
    assert problems == []


def test_a_provisioner_that_refuses_read_write_many_says_so_and_what_to_do():
    """kind's local-path provisioner, as it words the refusal once a trainer wants the claim."""
    refusal = ('failed to provision volume with StorageClass "standard": NodePath only supports ReadWriteOnce and '
               'ReadWriteOncePod (1.22+) access modes')
    status, problems = storage.observe_claim(claim(), claim(), [
        event("WaitForFirstConsumer", "waiting for first consumer", at=0),
        event("ProvisioningFailed", refusal, "Warning", at=5),
        # What kind showed next: the controller's Normal Event while the provisioner retries.
        event("ExternalProvisioning", "Waiting for a volume to be created either by the external provisioner "
              "'rancher.io/local-path' or manually by the system administrator.", at=9)])
    assert [p.reason for p in problems] == [cond.Reason.STORAGE_NOT_BOUND]
    message = problems[0].message
    assert message.startswith("claim churn-models (ReadWriteMany) is not bound: ProvisioningFailed: ")
    assert refusal in message and "spec.storage.pvc.accessMode: ReadWriteOnce" in message
    assert status["message"] == f"ProvisioningFailed: {refusal}"


def test_no_volume_and_no_class_is_a_problem_though_the_event_is_normal():
    _, problems = storage.observe_claim(claim(), claim(), [
        event("FailedBinding", "no persistent volumes available for this claim and no storage class is set")])
    assert [p.reason for p in problems] == [cond.Reason.STORAGE_NOT_BOUND]
    assert "ReadWriteOnce" not in problems[0].message  # the access-mode hint only where the provisioner said so


def test_a_lost_volume_is_fatal():
    _, problems = storage.observe_claim(claim(), claim(phase="Lost", volume="pvc-1"), [])
    assert problems[0].fatal and "lost volume pvc-1" in problems[0].message


def test_a_claim_not_yet_created_is_pending():
    status, problems = storage.observe_claim(claim(), None, [])
    assert status["phase"] == "Pending" and problems == []


@pytest.mark.parametrize(("desired", "existing", "named"), [
    (claim(modes=("ReadWriteOnce",)), claim(), "access mode ReadWriteOnce (the claim has ReadWriteMany)"),
    (claim(storage_class="fast"), claim(storage_class="standard"), "storage class fast (the claim has standard)"),
    (claim(size="1Gi"), claim(size="10Gi"), "size 1Gi (the claim has 10Gi; a claim cannot shrink)"),
])
def test_what_a_claim_cannot_take_is_named_not_sent(desired, existing, named):
    assert storage.claim_changes(desired, existing) == [named]
    _, problems = storage.observe_claim(desired, existing | {"status": {"phase": "Bound"}}, [])
    assert [p.reason for p in problems] == [cond.Reason.STORAGE_SPEC_IMMUTABLE] and named in problems[0].message


def test_what_a_claim_can_take_is_no_change():
    # A larger size (expansion), the cluster's default class chosen for it, the same size written otherwise.
    assert storage.claim_changes(claim(size="20Gi"), claim(size="10Gi")) == []
    assert storage.claim_changes(claim(), claim(storage_class="standard")) == []
    assert storage.claim_changes(claim(size="10Gi"), claim(size="10240Mi")) == []

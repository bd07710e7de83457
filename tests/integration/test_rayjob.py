"""The TrainingJob -> KubeRay RayJob path against the real control plane, with KubeRay's own RayJob CRD
(tests/harness/kuberay.py) installed for this module only.

There is no KubeRay controller here: where KubeRay would move a RayJob on, the test writes the RayJob's
status subresource as KubeRay does (jobDeploymentStatus, jobStatus, reason, message), and the trainer's
report into the TrainingJob's status.result as the runtime contract says."""

from __future__ import annotations

import copy
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client

from mlcycle_operator.api.mlproject import MLProjectSpec
from mlcycle_operator.api.trainingjob import TrainingJobSpec
from mlcycle_operator.resources import training
from mlcycle_operator.resources.common import Meta
from tests.harness import kuberay
from tests.harness.binaries import BuildError
from tests.harness.pytest_support import unavailable
from tests.integration.helpers import EXAMPLES, Mlcycle, condition, crds_served, missing, wait_for

pytestmark = pytest.mark.integration

RAY = ("ray.io", "v1")
CRD_NAME = "rayjobs.ray.io"
JOB, RAYJOB = "churn-v1", "churn-v1-train"


@pytest.fixture(scope="module")
def kuberay_crd(api_client, operator):
    """KubeRay's RayJob CRD, served while this module runs and removed afterwards, so that the other modules'
    TrainingJobs still get a batch Job."""
    try:
        path = kuberay.crd_path()
    except BuildError as err:
        unavailable("KubeRay's RayJob CRD", str(err))
    with crds_served(api_client, [path], "ray.io/v1"):
        yield path


@pytest.fixture
def rayml(ml: Mlcycle, kuberay_crd) -> Mlcycle:
    return ml


def get_rayjob(ml: Mlcycle, name: str = RAYJOB) -> dict[str, Any] | None:
    try:
        return ml.objects.get_namespaced_custom_object(*RAY, ml.namespace, "rayjobs", name)
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise


def kuberay_reports(ml: Mlcycle, **status: Any) -> None:
    """What KubeRay does as the job moves on: patch the RayJob's status subresource."""
    ml.objects.patch_namespaced_custom_object_status(*RAY, ml.namespace, "rayjobs", RAYJOB, {"status": status})


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def start(ml: Mlcycle) -> dict[str, Any]:
    """The example project and TrainingJob, once the operator has made the RayJob; returns the RayJob."""
    ml.create(EXAMPLES["MLProject"])
    ml.create(EXAMPLES["TrainingJob"])
    rayjob = wait_for(lambda: get_rayjob(ml), what="the RayJob")
    kuberay_reports(ml, jobDeploymentStatus="Initializing", jobStatus="PENDING", jobId=f"{RAYJOB}-x7k2p",
                    rayClusterName=f"{RAYJOB}-raycluster-x7k2p", startTime=stamp())
    return rayjob


def phase_is(ml: Mlcycle, phase: str):
    status = ml.status("TrainingJob", JOB)
    return status.get("phase") == phase and status


def test_a_training_job_becomes_a_ray_job_that_kuberays_schema_accepts(rayml: Mlcycle):
    ml = rayml
    rayjob = start(ml)
    tj = ml.get("TrainingJob", JOB)
    refs = rayjob["metadata"].get("ownerReferences") or []
    assert [(r["kind"], r["name"], r["uid"], r["controller"]) for r in refs] == \
        [("TrainingJob", JOB, tj["metadata"]["uid"], True)]
    status = wait_for(lambda: ml.status("TrainingJob", JOB).get("workload") and ml.status("TrainingJob", JOB),
                      what="status.workload")
    assert status["workload"] == {"kind": "RayJob", "name": RAYJOB}
    assert "RayJob churn-v1-train runs" in condition(status, "Progressing")["message"]
    assert ml.batch.list_namespaced_job(ml.namespace).items == [], "a TrainingJob gets a RayJob or a Job, not both"

    spec = rayjob["spec"]
    assert spec["entrypoint"] == "python -m mlcycle_runtime.train --config /etc/mlcycle/config.json"
    assert spec["shutdownAfterJobFinishes"] is True and spec["activeDeadlineSeconds"] == 6 * 3600
    [workers] = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert workers["replicas"] == 1, "workers: 1 is one worker pod; the head trains nothing"
    assert spec["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    policy = client.NetworkingV1Api(ml.objects.api_client).read_namespaced_network_policy("churn-v1-ray", ml.namespace)
    assert [(p.protocol, p.port) for p in policy.spec.ingress[1].ports] == [("TCP", 8265)]
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    (container,) = head["containers"]
    assert container["name"] == "ray-head" and "command" not in container, "KubeRay supplies `ray start --head`"
    assert {"name": "RAY_TMPDIR", "value": "/tmp/ray"} in container["env"]
    assert {e["name"] for e in container["env"]} >= {"POD_NAME", "POD_NAMESPACE"}
    assert container["resources"]["limits"]["cpu"] == "500m"  # the example's cpuPerWorker
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}
    assert head["serviceAccountName"] == "mlcycle-churn-workload"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in head["volumes"]}
    assert volumes[mounts["/etc/mlcycle"]]["configMap"]["name"] == "churn-v1-train-config"
    assert "emptyDir" in volumes[mounts["/tmp"]], "Ray writes its session under /tmp on a read-only root"
    config = ml.core.read_namespaced_config_map("churn-v1-train-config", ml.namespace)
    assert '"metric": "roc_auc"' in config.data["config.json"] and '"name": "churn-v1"' in config.data["config.json"]

    # What the builder wrote is what KubeRay's schema keeps: nothing pruned as unknown, and a strict create
    # (unknown or duplicate fields refused, naming them) of the same manifest passes.
    project = ml.get("MLProject", "churn")
    built = training.ray_job(TrainingJobSpec.model_validate(tj["spec"]), Meta.of(tj),
                             MLProjectSpec.model_validate(project["spec"]), status["lineage"]["image"])
    assert missing(built["spec"], spec) == []
    built["metadata"]["name"] = "strict-check"
    ml.objects.create_namespaced_custom_object(*RAY, ml.namespace, "rayjobs", built, dry_run="All",
                                               field_validation="Strict")


def test_kuberay_progress_and_the_trainers_report_make_a_succeeded_job(rayml: Mlcycle):
    ml = rayml
    start(ml)
    time.sleep(6)  # one observation (timer every 5 s) of a RayJob that is only initializing
    status = ml.status("TrainingJob", JOB)
    assert status["phase"] == "Pending" and condition(status, "Progressing")["status"] == "True"
    assert condition(status, "Degraded") is None

    kuberay_reports(ml, jobDeploymentStatus="Running", jobStatus="RUNNING", message="Job is currently running.")
    ml.report("TrainingJob", JOB, "result", {"phase": "Training", "validation": {"passed": True, "violations": []},
                                             "trials": {"total": 8, "finished": 3}})
    status = wait_for(lambda: phase_is(ml, "Training"), what="phase Training")
    assert condition(status, "DataValid")["status"] == "True"
    assert condition(status, "Progressing")["message"] == "phase Training: 3/8 trials"

    # KubeRay and the trainer do not order their writes: a completed RayJob is given a grace period for the
    # report, which arrives just after.
    kuberay_reports(ml, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", endTime=stamp(),
                    message="Job finished successfully.")
    result = copy.deepcopy(_succeeded_result())
    ml.report("TrainingJob", JOB, "result", result)
    status = wait_for(lambda: phase_is(ml, "Succeeded"), what="phase Succeeded")
    assert status["model"] == result["model"] and status["metrics"]["roc_auc"] == 0.83
    assert status["gatesPassed"] is True and condition(status, "GatesPassed")["status"] == "True"
    assert condition(status, "Progressing")["reason"] == "Finished" and condition(status, "Degraded") is None
    assert status["lineage"]["endTime"] and status["completionTime"]
    ml.wait_event(JOB, lambda e: e.startswith("Succeeded: model churn-classifier version v1"), "a Succeeded Event")

    # The real garbage collector removes the RayJob with its owner (once it watches the new kind).
    ml.objects.delete_namespaced_custom_object("mlcycle.io", "v1alpha1", ml.namespace, "trainingjobs", JOB)
    wait_for(lambda: get_rayjob(ml) is None, timeout=90, what="the RayJob to be collected")


def _succeeded_result() -> dict[str, Any]:
    return {
        "phase": "Succeeded",
        "validation": {"passed": True, "violations": []},
        "trials": {"total": 8, "finished": 8, "best": {"config": {"max_depth": 5}, "metrics": {"roc_auc": 0.83}}},
        "model": {"name": "churn-classifier", "version": "v1",
                  "uri": "pvc://churn-models/artifacts/churn/models/churn-classifier/v1"},
        "metrics": {"roc_auc": 0.83},
        "gates": [{"name": "minMetric", "threshold": 0.75, "value": 0.83, "passed": True}],
    }


def test_a_failed_ray_job_fails_the_training_job_in_words(rayml: Mlcycle):
    ml = rayml
    start(ml)
    kuberay_reports(ml, jobDeploymentStatus="Running", jobStatus="RUNNING")
    kuberay_reports(ml, jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed", endTime=stamp(),
                    message="Job entrypoint command failed with exit code 1")
    status = wait_for(lambda: phase_is(ml, "Failed"), what="phase Failed")
    degraded = condition(status, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "TrainingFailed"
    assert "AppFailed" in degraded["message"] and "exit code 1" in degraded["message"]
    assert condition(status, "Progressing")["status"] == "False"
    assert status.get("model") is None and status["completionTime"]
    ml.wait_event(JOB, lambda e: e.startswith("Failed:") and "exit code 1" in e, "a Failed Event naming the exit code")


def test_a_ray_job_past_its_deadline_says_so(rayml: Mlcycle):
    ml = rayml
    start(ml)
    kuberay_reports(ml, jobDeploymentStatus="Failed", jobStatus="RUNNING", reason="DeadlineExceeded",
                    message="The RayJob has passed the activeDeadlineSeconds.")
    status = wait_for(lambda: phase_is(ml, "Failed"), what="phase Failed")
    degraded = condition(status, "Degraded")
    assert degraded["reason"] == "DeadlineExceeded" and "spec.activeDeadline" in degraded["message"]


def _deadline_accepted(ml: Mlcycle) -> bool:
    """Whether the served RayJob schema holds spec.activeDeadlineSeconds (a strict dry run)."""
    probe = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "probe"},
             "spec": {"entrypoint": "true", "activeDeadlineSeconds": 60}}
    try:
        ml.objects.create_namespaced_custom_object(*RAY, ml.namespace, "rayjobs", probe, dry_run="All",
                                                   field_validation="Strict")
        return True
    except client.ApiException as err:
        if err.status not in (400, 422):
            raise
        return False


def test_a_rayjob_the_installed_crd_cannot_hold_fails_the_job_in_words(rayml: Mlcycle, api_client):
    """An older KubeRay whose RayJob schema lacks a field the operator sets (here activeDeadlineSeconds): the API
    server refuses the RayJob and the TrainingJob fails naming the field, instead of training with its deadline
    silently dropped."""
    ml = rayml
    ext = client.ApiextensionsV1Api(api_client)
    crd = json.loads(ext.read_custom_resource_definition(CRD_NAME, _preload_content=False).data)
    index = next(i for i, v in enumerate(crd["spec"]["versions"]) if v["name"] == "v1")
    pointer = f"/spec/versions/{index}/schema/openAPIV3Schema/properties/spec/properties/activeDeadlineSeconds"
    original = crd["spec"]["versions"][index]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "activeDeadlineSeconds"]
    ext.patch_custom_resource_definition(CRD_NAME, [{"op": "remove", "path": pointer}], _preload_content=False)
    try:
        wait_for(lambda: not _deadline_accepted(ml), timeout=30, what="the RayJob schema without the deadline")
        ml.create(EXAMPLES["MLProject"])
        ml.create(EXAMPLES["TrainingJob"])
        status = wait_for(lambda: phase_is(ml, "Failed"), what="phase Failed")
        degraded = condition(status, "Degraded")
        assert degraded["status"] == "True" and degraded["reason"] == "WorkloadRefused", degraded
        assert f"RayJob {RAYJOB}" in degraded["message"] and "activeDeadlineSeconds" in degraded["message"]
        assert condition(status, "Progressing")["status"] == "False" and status["completionTime"]
        assert get_rayjob(ml) is None, "nothing may run without the deadline it was given"
        ml.wait_event(JOB, lambda e: e.startswith("WorkloadRefused:") and "activeDeadlineSeconds" in e,
                      "a WorkloadRefused Event naming the field")
    finally:
        ext.patch_custom_resource_definition(CRD_NAME, [{"op": "add", "path": pointer, "value": original}],
                                             _preload_content=False)
        wait_for(lambda: _deadline_accepted(ml), timeout=30, what="the RayJob schema restored")

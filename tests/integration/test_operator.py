"""The operator against the real control plane: the churn example's four resources reconcile into their
children (with owner references), status explains itself, drift starts exactly one retraining, and deleting
an owner lets the garbage collector remove its children.

The trainer and the drift monitor are not running here (their pods are KWOK's); where the operator needs
their reports, the test writes them through the status subresource exactly as the runtime contract says
the workloads do (`status.result`, `status.report`)."""

from __future__ import annotations

import copy
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.integration.helpers import EXAMPLES, GROUP, VERSION, Mlcycle, condition, owned_by, read_or_none, wait_for

pytestmark = pytest.mark.integration

def trainer_result(version: str, auc: float = 0.83) -> dict[str, Any]:
    """The report a successful trainer writes into status.result (runtime contract)."""
    return {
        "phase": "Succeeded",
        "validation": {"passed": True, "violations": []},
        "trials": {"total": 8, "finished": 8, "best": {"config": {"max_depth": 5}, "metrics": {"roc_auc": auc}}},
        "model": {"name": "churn-classifier", "version": version,
                  "uri": f"pvc://churn-models/artifacts/churn/models/churn-classifier/{version}"},
        "metrics": {"roc_auc": auc, "brier": 0.12},
        "baselines": {"zeroRule": {"roc_auc": 0.5}, "random": {"roc_auc": 0.49}},
        "gates": [{"name": "minMetric", "threshold": 0.75, "value": auc, "passed": auc >= 0.75}],
        "lineage": {"dataFingerprint": "sha256:feedbeef", "featureRefs": ["customer:tenure_months"]},
    }


def test_project_provisions_identity_feature_store_and_storage(ml: Mlcycle):
    project = ml.create(EXAMPLES["MLProject"])
    status = wait_for(lambda: ml.status("MLProject", "churn").get("phase") == "Ready"
                      and ml.status("MLProject", "churn"), what="MLProject Ready")
    assert status["observedGeneration"] == project["metadata"]["generation"]
    assert condition(status, "Ready")["status"] == "True"
    assert status["serviceAccount"] == "mlcycle-churn-workload"
    sa = ml.core.read_namespaced_service_account("mlcycle-churn-workload", ml.namespace)
    assert owned_by(sa, project)
    role = client.RbacAuthorizationV1Api(ml.core.api_client).read_namespaced_role("mlcycle-churn-workload",
                                                                                  ml.namespace)
    # Least privilege: workloads may report status and read config, nothing else, never secrets.
    verbs = {(res, verb) for rule in role.rules for res in rule.resources for verb in rule.verbs}
    assert ("trainingjobs/status", "patch") in verbs and ("driftmonitors/status", "patch") in verbs
    assert not any(res in ("secrets", "pods", "*") or verb in ("create", "delete", "*") for res, verb in verbs)
    fs = ml.core.read_namespaced_config_map("mlcycle-churn-feature-store", ml.namespace)
    assert owned_by(fs, project)
    feature_store = yaml.safe_load(fs.data["feature_store.yaml"])
    assert feature_store["project"] == "churn"
    assert feature_store["online_store"] == {"type": "sqlite", "path": "/mnt/pvc/churn-models/feast/online.db"}
    cron = ml.batch.read_namespaced_cron_job("mlcycle-churn-materialize", ml.namespace)
    assert cron.spec.schedule == "*/30 * * * *" and owned_by(cron, project)
    pod = cron.spec.job_template.spec.template.spec
    assert pod.security_context.run_as_non_root and pod.containers[0].security_context.read_only_root_filesystem
    pvc = ml.core.read_namespaced_persistent_volume_claim("churn-models", ml.namespace)
    assert not pvc.metadata.owner_references, "the model store must outlive the project"
    ml.wait_event("churn", lambda e: "ChildrenApplied" in e, "a ChildrenApplied Event")


def test_a_claim_that_cannot_bind_or_change_is_said_in_the_projects_status(ml: Mlcycle):
    """The real PV controller's words reach the MLProject: a class that does not exist keeps its claim Pending
    (Ready False, StorageNotBound). A bound claim asked for another access mode is Degraded naming the change,
    and nothing is sent: the API server refuses a claim's new access mode (422) on every retry."""
    lost = copy.deepcopy(EXAMPLES["MLProject"])
    lost["metadata"]["name"] = "lost-store"
    lost["spec"]["storage"] = {"uri": "pvc://lost-models/artifacts",
                               "pvc": {"size": "1Gi", "storageClassName": "no-such-class"}}
    ml.create(lost)
    status = wait_for(lambda: (s := ml.status("MLProject", "lost-store")).get("phase") == "Degraded" and s,
                      timeout=60, what="MLProject Degraded by its claim")
    ready = condition(status, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "StorageNotBound", ready
    assert 'storageclass.storage.k8s.io "no-such-class" not found' in ready["message"], ready
    assert status["storage"]["claim"] == "lost-models" and status["storage"]["phase"] == "Pending"
    ml.wait_event("lost-store", lambda e: e.startswith("StorageNotBound: claim lost-models"),
                  "a StorageNotBound Event")

    ml.create(EXAMPLES["MLProject"])  # churn-models: the fixture's volume binds it
    status = wait_for(lambda: (s := ml.status("MLProject", "churn")).get("storage", {}).get("phase") == "Bound"
                      and s["phase"] == "Ready" and s, timeout=60, what="the churn project's claim Bound")
    assert status["storage"]["message"].startswith("bound to volume models-")
    claim_version = ml.core.read_namespaced_persistent_volume_claim("churn-models", ml.namespace).metadata
    ml.objects.patch_namespaced_custom_object(GROUP, VERSION, ml.namespace, "mlprojects", "churn",
                                              {"spec": {"storage": {"pvc": {"accessMode": "ReadWriteOnce"}}}})
    status = wait_for(lambda: (s := ml.status("MLProject", "churn")).get("phase") == "Degraded" and s,
                      timeout=30, what="MLProject Degraded by a change its claim cannot take")
    degraded = condition(status, "Degraded")
    assert degraded["reason"] == "StorageSpecImmutable", degraded
    assert "access mode ReadWriteOnce (the claim has ReadWriteMany)" in degraded["message"]
    assert condition(status, "Ready")["status"] == "True"  # the models are still there to read and write
    # The update is handled to the end: Kopf moves its diff base to the new spec only once the update's handlers
    # succeeded (a refused patch would fail the handler and leave it behind, with a retry due), and the Warning
    # that announces the change has been posted.
    def handled() -> bool:
        annotations = ml.get("MLProject", "churn")["metadata"].get("annotations") or {}
        base = json.loads(annotations.get("mlcycle.io/last-handled-configuration") or "{}")
        return base.get("spec", {}).get("storage", {}).get("pvc", {}).get("accessMode") == "ReadWriteOnce"

    wait_for(handled, timeout=30, what="the operator to finish handling the access-mode change")
    ml.wait_event("churn", lambda e: e.startswith("StorageSpecImmutable:"), "a StorageSpecImmutable Event")
    after = ml.core.read_namespaced_persistent_volume_claim("churn-models", ml.namespace)
    assert after.metadata.resource_version == claim_version.resource_version, "the claim was written to"
    failures = [e for e in ml.events("churn") if "failed" in e.lower()]
    assert not failures, f"the reconcile failed (a refused patch retried): {failures}"


def test_training_job_runs_as_a_job_and_explains_a_silent_exit(ml: Mlcycle):
    ml.create(EXAMPLES["MLProject"])
    job = ml.create(EXAMPLES["TrainingJob"])
    batch = wait_for(lambda: read_or_none(ml.batch.read_namespaced_job, "churn-v1-train", ml.namespace),
                     what="the training Job")
    assert owned_by(batch, job)
    container = batch.spec.template.spec.containers[0]
    assert container.command == ["python", "-m", "mlcycle_runtime.train", "--config", "/etc/mlcycle/config.json"]
    assert batch.spec.active_deadline_seconds == 6 * 3600
    config = ml.core.read_namespaced_config_map("churn-v1-train-config", ml.namespace)
    assert '"metric": "roc_auc"' in config.data["config.json"]
    # KWOK completes Job pods at once without running anything: no report was written, so the job must
    # fail in words rather than sit in a phase or pass silently.
    status = wait_for(lambda: ml.status("TrainingJob", "churn-v1").get("phase") == "Failed"
                      and ml.status("TrainingJob", "churn-v1"), what="TrainingJob Failed")
    assert status["workload"] == {"kind": "Job", "name": "churn-v1-train"}
    degraded = condition(status, "Degraded")
    assert degraded["status"] == "True" and "without reporting a result" in degraded["message"]
    ml.wait_event("churn-v1", lambda e: e.startswith("Failed:"), "a Failed Event")


def test_training_job_spec_is_immutable(ml: Mlcycle):
    ml.create(EXAMPLES["MLProject"])
    ml.create(EXAMPLES["TrainingJob"])
    with pytest.raises(client.ApiException) as refused:
        ml.objects.patch_namespaced_custom_object(GROUP, VERSION, ml.namespace, "trainingjobs", "churn-v1",
                                                  {"spec": {"model": {"params": {"max_depth": 3}}}})
    assert refused.value.status == 422 and "immutable" in refused.value.body


def test_bad_data_report_fails_the_job_with_every_violation(ml: Mlcycle):
    ml.create(EXAMPLES["MLProject"])
    job = copy.deepcopy(EXAMPLES["TrainingJob"])
    ml.create(job)
    ml.report("TrainingJob", "churn-v1", "result", {
        "phase": "Failed", "error": "data validation failed",
        "validation": {"passed": False, "violations": [
            "tenure_months: 12 values above max 600", "plan: unexpected value 'gold' (3 rows)"]}})
    status = wait_for(lambda: ml.status("TrainingJob", "churn-v1").get("phase") == "Failed"
                      and ml.status("TrainingJob", "churn-v1"), what="TrainingJob Failed on bad data")
    data = condition(status, "DataValid")
    assert data["status"] == "False" and data["reason"] == "BadData"
    assert "tenure_months: 12 values above max 600" in data["message"] and "'gold'" in data["message"]


def test_the_loop_in_resources(ml: Mlcycle):
    """Train (reported) -> serve the gated model -> drift report -> one retraining -> canary of the new model."""
    ml.create(EXAMPLES["MLProject"])
    ml.create(EXAMPLES["TrainingJob"])
    # The trainer reports before its pod is gone, as a real one does.
    ml.report("TrainingJob", "churn-v1", "result", trainer_result("v1"))
    status = wait_for(lambda: ml.status("TrainingJob", "churn-v1").get("phase") == "Succeeded"
                      and ml.status("TrainingJob", "churn-v1"), what="TrainingJob Succeeded")
    assert status["gatesPassed"] is True and condition(status, "GatesPassed")["status"] == "True"
    assert status["model"]["version"] == "v1" and status["metrics"]["roc_auc"] == 0.83

    md = ml.create(EXAMPLES["ModelDeployment"])
    # Available with its first ready replica; the count follows as the second one comes up (each change nudges).
    status = wait_for(lambda: ml.status("ModelDeployment", "churn").get("phase") == "Available"
                      and ml.status("ModelDeployment", "churn").get("readyReplicas", 0) >= 2
                      and ml.status("ModelDeployment", "churn"), timeout=90,
                      what="ModelDeployment Available with both replicas counted")
    assert status["stableVersion"] == "v1" and status["trafficSummary"] == "v1=100"
    assert status["trainingJob"] == "churn-v1" and status["endpoint"] == f"http://churn.{ml.namespace}.svc"
    server = ml.apps.read_namespaced_deployment("churn-v-v1", ml.namespace)
    assert owned_by(server, md)
    pod = server.spec.template.spec
    assert pod.containers[0].command[:3] == ["python", "-m", "mlcycle_runtime.serve"]
    assert pod.containers[0].security_context.read_only_root_filesystem
    assert pod.containers[0].resources.limits == {"cpu": "250m", "memory": "512Mi"}
    assert owned_by(ml.apps.read_namespaced_deployment("churn-router", ml.namespace), md)
    assert owned_by(ml.core.read_namespaced_service("churn", ml.namespace), md)
    hpa = client.AutoscalingV2Api(ml.core.api_client).read_namespaced_horizontal_pod_autoscaler("churn-v-v1",
                                                                                                ml.namespace)
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (2, 6)
    # This cluster has no resource metrics API (no metrics-server): the autoscaler cannot scale, and once that has
    # lasted two minutes the ModelDeployment says so in the HPA controller's words, while it serves.
    status = wait_for(lambda: (condition(s := ml.status("ModelDeployment", "churn"), "Degraded") or {}).get("reason")
                      == "AutoscalingInactive" and s, timeout=240, what="Degraded AutoscalingInactive")
    assert status["phase"] == "Available" and condition(status, "Ready")["status"] == "True"
    assert "autoscaler churn-v-v1 cannot scale" in condition(status, "Degraded")["message"]
    assert "metrics" in condition(status, "Degraded")["message"]
    assert owned_by(client.PolicyV1Api(ml.core.api_client).read_namespaced_pod_disruption_budget(
        "churn-v-v1", ml.namespace), md)
    routes = ml.core.read_namespaced_config_map("churn-router", ml.namespace).data["config.json"]
    assert '"weight": 100' in routes and f"churn-v-v1.{ml.namespace}.svc:3000" in routes
    wait_for(lambda: (ml.status("MLProject", "churn").get("champion") or {}).get("version") == "v1",
             timeout=60, what="the project to name v1 its champion")

    ml.create(EXAMPLES["DriftMonitor"])
    wait_for(lambda: ml.status("DriftMonitor", "churn").get("phase") == "Monitoring", what="DriftMonitor running")
    drift = ml.apps.read_namespaced_deployment("churn-drift", ml.namespace)
    assert drift.spec.template.spec.containers[0].command[:3] == ["python", "-m", "mlcycle_runtime.drift"]

    def drift_report(at: datetime) -> dict[str, Any]:
        return {"time": at.isoformat().replace("+00:00", "Z"), "window": "30m", "samples": 2400, "version": "v1",
                "drifted": True, "driftedFeatures": ["monthly_charges"],
                "features": [
                    {"name": "monthly_charges", "method": "psi", "score": 0.41, "threshold": 0.2, "drifted": True},
                    {"name": "tenure_months", "method": "psi", "score": 0.03, "threshold": 0.2, "drifted": False}]}

    ml.report("DriftMonitor", "churn", "report", drift_report(datetime.now(UTC).replace(microsecond=0)))
    retrains = wait_for(lambda: ml.list("TrainingJob", "mlcycle.io/retrained-by=churn"), what="a retraining")
    # Its trainer (KWOK's pod) reports at once: the retrained model passes its gates.
    ml.report("TrainingJob", retrains[0]["metadata"]["name"], "result", trainer_result("v2", auc=0.86))
    status = wait_for(lambda: (ml.status("DriftMonitor", "churn").get("lastRetrain") or {}).get("trainingJob")
                      and ml.status("DriftMonitor", "churn"), what="the retraining in status")
    assert condition(status, "DriftDetected")["status"] == "True" and status["phase"] == "Drifted"
    assert status["lastReport"]["driftedFeatures"] == ["monthly_charges"]
    retrain_name = status["lastRetrain"]["trainingJob"]
    retrain = ml.get("TrainingJob", retrain_name)
    # Cloned from the lineage of the model in service, keeping the labels the deployment tracks.
    assert retrain["spec"]["output"]["modelName"] == "churn-classifier"
    assert retrain["metadata"]["labels"]["mlcycle.io/model"] == "churn-classifier"
    assert "monthly_charges=0.41" in status["lastRetrain"]["reason"]

    # A second drift report inside the cooldown starts nothing.
    time.sleep(1.1)
    ml.report("DriftMonitor", "churn", "report", drift_report(datetime.now(UTC).replace(microsecond=0)))
    ml.wait_event("churn", lambda e: "RetrainingCoolingDown" in e, "a cooldown Event")
    assert len(ml.list("TrainingJob", "mlcycle.io/retrained-by=churn")) == 1
    assert ml.status("DriftMonitor", "churn")["retrainsToday"] == 1

    # The retrained model becomes the canary, held there: the operator queries the session's Prometheus, which has
    # no router series of this deployment (its pods are KWOK's and serve nothing), so analysis is inconclusive.
    status = wait_for(lambda: ml.status("ModelDeployment", "churn").get("candidateVersion") == "v2"
                      and (ml.status("ModelDeployment", "churn").get("trafficSummary") or "").endswith("v2=10")
                      and ml.status("ModelDeployment", "churn"), timeout=90, what="a canary of v2 at 10%")
    assert status["phase"] == "Progressing" and status["stableVersion"] == "v1"
    assert status["trafficSummary"] == "v1=90 v2=10"
    # Told by the retraining once its Succeeded phase was stored, not found by the minute-long resync.
    annotations = ml.get("ModelDeployment", "churn")["metadata"].get("annotations") or {}
    assert annotations.get("nudge.mlcycle.io/new-model") == f"{retrain_name}/v2", annotations
    wait_for(lambda: any(r["verdict"] == "Inconclusive" for r in
                         (ml.status("ModelDeployment", "churn").get("rollout") or {}).get("analysisRuns", [])),
             timeout=60, what="an inconclusive analysis run (no router metrics in Prometheus)")
    assert ml.status("ModelDeployment", "churn")["stableVersion"] == "v1", "inconclusive must never promote"


def test_deleting_a_deployment_collects_its_children(ml: Mlcycle):
    ml.create(EXAMPLES["MLProject"])
    md = copy.deepcopy(EXAMPLES["ModelDeployment"])
    md["spec"]["model"] = {"name": "churn-classifier", "version": "v7"}
    ml.create(md)
    wait_for(lambda: read_or_none(ml.apps.read_namespaced_deployment, "churn-v-v7", ml.namespace), what="v7 server")
    wait_for(lambda: read_or_none(ml.apps.read_namespaced_deployment, "churn-router", ml.namespace), what="router")
    ml.objects.delete_namespaced_custom_object(GROUP, VERSION, ml.namespace, "modeldeployments", "churn")

    def gone():
        names = {d.metadata.name for d in ml.apps.list_namespaced_deployment(ml.namespace).items}
        services = {s.metadata.name for s in ml.core.list_namespaced_service(ml.namespace).items}
        return not names & {"churn-v-v7", "churn-router"} and not services & {"churn", "churn-v-v7"}

    wait_for(gone, what="the garbage collector to remove the deployment's children")


def test_a_field_the_schema_lacks_is_refused_not_dropped(ml: Mlcycle):
    """The operator's creates and applies ask for strict field validation: a field the API server's schema lacks
    is an error naming it, and nothing is created without it."""
    from mlcycle_operator import kube

    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "strict", "namespace": ml.namespace},
                "data": {"a": "b"}, "dat": {"c": "d"}}
    with pytest.raises(client.ApiException) as refused:
        kube.apply(manifest, None)
    assert refused.value.status in (400, 422) and 'unknown field "dat"' in kube.refusal(refused.value)
    assert read_or_none(ml.core.read_namespaced_config_map, "strict", ml.namespace) is None
    del manifest["dat"]
    kube.apply(manifest, None)
    manifest["data"]["e"], manifest["extra"] = "f", True
    with pytest.raises(client.ApiException) as refused:
        kube.apply(manifest, kube.get("v1", "ConfigMap", ml.namespace, "strict"))
    # Server-side apply words it its own way (and answers it as an internal error, a Kubernetes quirk).
    assert ".extra: field not declared in schema" in kube.refusal(refused.value), kube.refusal(refused.value)
    assert ml.core.read_namespaced_config_map("strict", ml.namespace).data == {"a": "b"}

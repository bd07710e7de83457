"""Train and serve for real: the operator's Job runs `python -m mlcycle_runtime.train` as a pod on the process
node (uid 65532, read-only root, its config and the project's claim mounted where the pod spec says), the
trainer reports through the status subresource with the workload ServiceAccount, the operator turns the report
into phase, model and gates; the ModelDeployment that tracks the project's gated models then serves it with
`bentoml serve` pods behind the router pod, which finds them through their EndpointSlices."""

from __future__ import annotations

import copy
from pathlib import Path

import httpx
import pytest
from kubernetes import client

from tests.integration.helpers import EXAMPLES, wait_for

pytestmark = pytest.mark.e2e

ROWS = 3000


def project_without_feature_store() -> dict:
    project = copy.deepcopy(EXAMPLES["MLProject"])
    project["spec"].pop("featureStore", None)  # the job below reads Parquet straight from the claim
    return project


def training_job(name: str, source: str) -> dict:
    job = copy.deepcopy(EXAMPLES["TrainingJob"])
    job["metadata"]["name"] = name
    spec = job["spec"]
    spec["data"]["source"]["uri"] = source
    spec["data"].pop("featureService", None)
    spec["tuning"].update(numSamples=2, maxConcurrentTrials=1)
    spec["model"]["params"]["num_boost_round"] = 20
    spec["evaluation"]["gates"]["minMetric"] = 0.6
    return job


def test_a_trained_model_is_served_behind_the_router(ml, node, api_client):
    from examples.churn.generate import write

    claim_dir = Path("/tmp") / f"models-{ml.namespace}"[:63]  # the hostPath the ml fixture binds to the claim
    write(claim_dir / "data", rows=ROWS)
    ml.create(project_without_feature_store())
    ml.create(training_job("churn-e2e", "pvc://churn-models/data/customers.parquet"))

    def finished():
        status = ml.status("TrainingJob", "churn-e2e")
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = wait_for(finished, 420, "the training job to finish")
    core = client.CoreV1Api(api_client)
    pods = core.list_namespaced_pod(ml.namespace, label_selector="job-name").items
    logs = "\n".join(node.logs(ml.namespace, p.metadata.name) for p in pods)
    assert status["phase"] == "Succeeded", (status.get("conditions"), logs[-4000:])
    assert {p.spec.node_name for p in pods} == {node.name}

    model = status["model"]
    assert model["name"] == "churn-classifier"
    assert model["uri"] == f"pvc://churn-models/artifacts/churn/models/churn-classifier/{model['version']}"
    version_dir = claim_dir / "artifacts/churn/models/churn-classifier" / model["version"]
    assert {p.name for p in version_dir.iterdir()} >= {"model.json", "reference.json", "model.bentomodel",
                                                      "_COMPLETE"}
    assert status["gatesPassed"] is True and status["metrics"]["roc_auc"] > 0.6
    assert status["trials"]["finished"] == 2
    assert "trial 2/2 done" in logs

    # The example deployment tracks the project's gated models: the one just trained is served.
    deployment = copy.deepcopy(EXAMPLES["ModelDeployment"])
    deployment["spec"]["serving"].update(replicas=1, autoscaling={"enabled": False},
                                         batching={"enabled": False})
    ml.create(deployment)

    def available():
        md = ml.status("ModelDeployment", "churn")
        return md if md.get("phase") == "Available" and md.get("stableVersion") == model["version"] else None

    md = wait_for(available, 240, "the model to be served")
    router = wait_for(lambda: [p for p in core.list_namespaced_pod(
        ml.namespace, label_selector="app.kubernetes.io/component=router").items
        if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])], 120,
        "a ready router pod")[0]
    record = {"tenure_months": 3, "monthly_charges": 99.5, "support_calls": 6, "data_usage_gb": 1.5,
              "contract": "month-to-month", "plan": "basic", "region": "north"}
    answer = httpx.post(f"http://{router.status.pod_ip}:8080/predict", json={"records": [record]}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["version"] == model["version"] == answer.headers["x-mlcycle-variant"]
    assert 0.0 <= body["predictions"][0] <= 1.0
    assert md["traffic"] == [{"version": model["version"], "weight": 100, "role": "stable", "shadowPercent": 0}]

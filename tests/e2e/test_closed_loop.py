"""The product as a whole, every pod a real process on the process node: v1 trains (the operator's Job runs the
Ray trainer as uid 65532 with a read-only root) and is served by `bentoml serve` behind the router; steady traffic
flows; fresh data lands and traffic drifts; the DriftMonitor's pod reads the router's histograms from the real
Prometheus and reports drift on exactly the shifted features; the operator starts one retraining (and no second
inside the cooldown); v2 trains on the fresh data, beats v1 on it, and is promoted through a canary analysed on
Prometheus; a bad v3 (gated offline, slow online) is rolled back at its failureLimit-th failed analysis. Every
client request of the whole run is counted: none fails. The scenario lives in tests/harness/loop.py (`make
demo` runs the same one)."""

from __future__ import annotations

import sys
import time

import httpx
import pytest
from kubernetes import client

from examples.churn.generate import CATEGORICAL, NUMERIC
from tests.harness.loop import DATA_URI, FAILURE_LIMIT, LATENCY_METRIC, MODEL, SHIFTED, ClosedLoop

pytestmark = pytest.mark.e2e


def claim_directory(namespace: str):
    from pathlib import Path

    return Path("/tmp") / f"models-{namespace}"[:63]  # the hostPath the ml fixture binds to the claim


def say(message: str) -> None:
    """Progress, shown with -s: KopfRunner's click runner holds sys.stdout for the session, so the real one."""
    print(f"[e2e {time.strftime('%H:%M:%S')}] {message}", file=sys.__stdout__, flush=True)


@pytest.mark.timeout(1800)  # about 12 minutes on 2 cores: three trainings, four servers, real waits
def test_drift_retrains_promotes_and_rolls_back(ml, node, api_client):
    loop = ClosedLoop(ml, claim_directory(ml.namespace), logs=lambda pod: node.logs(ml.namespace, pod), say=say)
    try:
        loop.start()
        _first_model(loop, ml, node, api_client)
        _served(loop)
        _drift_starts_one_retraining(loop, ml)
        _promoted(loop)
        _rolled_back(loop, ml)
    finally:
        loop.finish()
        say("the loop, as it happened:\n" + loop.summary())
    traffic = loop.traffic
    assert traffic.failures == [], traffic.failures[:10]
    assert traffic.ok == traffic.sent > 1000
    v1, v2, v3 = (loop.facts[k]["model"]["version"] for k in ("v1", "v2", "v3"))
    assert set(traffic.versions) == {v1, v2, v3}  # every version answered clients, none of them failed one


def _first_model(loop: ClosedLoop, ml, node, api_client) -> None:
    status = loop.first_model()
    core = client.CoreV1Api(api_client)
    pods = core.list_namespaced_pod(ml.namespace, label_selector="job-name").items
    assert {p.spec.node_name for p in pods} == {node.name}
    assert "trial 2/2 done" in "\n".join(node.logs(ml.namespace, p.metadata.name) for p in pods)
    model = status["model"]
    assert model["name"] == MODEL
    assert model["uri"] == f"pvc://churn-models/artifacts/churn/models/{MODEL}/{model['version']}"
    version_dir = loop.claim_dir / f"artifacts/churn/models/{MODEL}" / model["version"]
    assert {p.name for p in version_dir.iterdir()} >= {"model.json", "reference.json", "model.bentomodel",
                                                      "_COMPLETE"}
    assert status["gatesPassed"] is True and status["metrics"]["roc_auc"] > 0.65
    assert status["trials"]["finished"] == 2


def _served(loop: ClosedLoop) -> None:
    md = loop.serve()
    v1 = loop.facts["v1"]["model"]["version"]
    assert md["traffic"] == [{"version": v1, "weight": 100, "role": "stable", "shadowPercent": 0}]
    record = loop.traffic.steady[0]
    answer = httpx.post(f"{loop.url}/predict", json={"records": [record]}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == v1 == answer.headers["x-mlcycle-variant"]
    assert 0.0 <= answer.json()["predictions"][0] <= 1.0


def _drift_starts_one_retraining(loop: ClosedLoop, ml) -> None:
    status = loop.drift()
    quiet = loop.facts["before drift"]
    # Steady traffic was compared with v1's reference and found like it: the monitor ran, found nothing.
    assert quiet["lastReport"]["drifted"] is False, quiet["lastReport"]
    assert "lastRetrain" not in quiet
    untouched = (set(NUMERIC) | set(CATEGORICAL)) - set(SHIFTED)
    first = status["lastReport"]  # of a window partly steady, partly drifted: one shifted feature may lead
    assert first["drifted"] is True and set(first["driftedFeatures"]) & set(SHIFTED), first
    assert not set(first["driftedFeatures"]) & untouched, first
    retrain = status["lastRetrain"]
    assert retrain["time"] >= loop.facts["drift started"].isoformat()[:19]
    assert any(name in retrain["reason"] for name in first["driftedFeatures"]), retrain
    # A window of drifted traffic only: exactly the shifted features.
    report = loop.facts["drifted window"]
    assert set(report["driftedFeatures"]) >= set(SHIFTED) and not set(report["driftedFeatures"]) & untouched, report
    assert report["samples"] >= 200

    # The retraining is the served model's job, cloned: same labels (so the deployment tracks it), same data
    # source, read again now that it holds the fresh partition.
    job = ml.get("TrainingJob", retrain["trainingJob"])
    assert job["metadata"]["labels"]["mlcycle.io/model"] == MODEL
    assert job["spec"]["data"]["source"]["uri"] == DATA_URI

    # Drift goes on while it trains; the monitor keeps reporting and the operator starts nothing more.
    loop.wait(lambda: any(e.startswith("RetrainingCoolingDown") for e in ml.events("churn")), 120,
              "a drifted report skipped for the cooldown")
    retrains = ml.list("TrainingJob", "mlcycle.io/retrained-by=churn")
    assert [j["metadata"]["name"] for j in retrains] == [retrain["trainingJob"]]


def _promoted(loop: ClosedLoop) -> None:
    md = loop.retrain_and_promote()
    v1, v2 = loop.facts["v1"], loop.facts["v2"]
    # Trained on more, newer data, and better than the model in service on the newest rows.
    assert sum(v2["lineage"]["rows"].values()) > sum(v1["lineage"]["rows"].values())
    assert v2["lineage"]["dataFingerprint"] != v1["lineage"]["dataFingerprint"]
    assert v2["gatesPassed"] is True
    promoted = loop.facts["promote v2"]
    assert md["stableVersion"] == v2["model"]["version"]
    assert md["traffic"] == [{"version": v2["model"]["version"], "weight": 100, "role": "stable",
                              "shadowPercent": 0}]
    runs = promoted["runs"]
    assert runs and all(r["verdict"] in ("Pass", "Inconclusive") for r in runs), runs
    assert any(r["verdict"] == "Pass" for r in runs), runs
    measured = {m["name"] for r in runs for m in r["measurements"]}
    assert measured == {"error-rate", LATENCY_METRIC}


def _rolled_back(loop: ClosedLoop, ml) -> None:
    md = loop.bad_model()
    v2, v3 = loop.facts["v2"]["model"]["version"], loop.facts["v3"]["model"]["version"]
    assert loop.facts["v3"]["gatesPassed"] is True  # good offline
    assert md["stableVersion"] == v2
    assert md["history"][-1]["outcome"] == "RolledBack"
    runs = loop.facts["roll back v3"]["runs"]
    failed = [r for r in runs if r["verdict"] == "Fail"]
    # Rolled back at the failureLimit-th failed run, on latency against the stable's (the ratio is in the run).
    assert len(failed) == FAILURE_LIMIT, runs
    latency = [m for r in failed for m in r["measurements"] if m["name"] == LATENCY_METRIC]
    assert latency and all(m["value"] > m["threshold"] for m in latency), failed
    assert any(e.startswith("RolledBack:") and v3 in e for e in ml.events("churn")), ml.events("churn")
    # Not retried: the deployment stays on v2 while v3 remains the newest gated model.
    loop.wait(lambda: not ml.status("ModelDeployment", "churn").get("retiring"), 120, "v3's server to be removed")
    md = ml.status("ModelDeployment", "churn")
    assert md["stableVersion"] == v2 and "candidateVersion" not in md
    assert [t["version"] for t in md["traffic"]] == [v2]
    assert v3 not in {d.metadata.annotations.get("mlcycle.io/model-version") for d in
                      ml.apps.list_namespaced_deployment(ml.namespace).items}

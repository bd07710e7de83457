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

import pytest
from kubernetes import client

from tests import loop_checks as checks
from tests.harness import process_node
from tests.harness.loop import MODEL, ClosedLoop

pytestmark = pytest.mark.e2e


def claim_directory(namespace: str):
    from pathlib import Path

    return Path("/tmp") / f"models-{namespace}"[:63]  # the hostPath the ml fixture binds to the claim


def say(message: str) -> None:
    """Progress, shown with -s: KopfRunner's click runner holds sys.stdout for the session, so the real one."""
    print(f"[e2e {time.strftime('%H:%M:%S')}] {message}", file=sys.__stdout__, flush=True)


@pytest.mark.timeout(1800)  # about 12 minutes on 2 cores: three trainings, four servers, real waits
def test_drift_retrains_promotes_and_rolls_back(ml, node, api_client):
    loop = ClosedLoop(ml, claim_directory(ml.namespace), logs=lambda pod: node.logs(ml.namespace, pod), say=say,
                      pod_address=process_node.host_address)
    try:
        loop.start()
        _first_model(loop, ml, node, api_client)
        checks.served(loop)
        checks.drift_starts_one_retraining(loop, ml)
        checks.promoted(loop)
        checks.rolled_back(loop, ml)
    finally:
        loop.finish()
        say("the loop, as it happened:\n" + loop.summary())
    checks.every_request_answered(loop)


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

"""Canary rollouts decided on live metrics: a real Prometheus scrapes router metrics whose traffic the test
controls; the operator queries it every analysis interval and promotes a healthy candidate or rolls back one
whose error rate crosses the threshold, within interval x failureLimit."""

from __future__ import annotations

import copy
import itertools
from datetime import datetime

import pytest

from tests.integration.helpers import EXAMPLES, Mlcycle, condition, wait_for

pytestmark = pytest.mark.integration

INTERVAL_S, FAILURE_LIMIT = 4, 2


def fast_canary_deployment(version: str, scale_down_delay: str | None = None) -> dict:
    """The example deployment pinned to a version, with a canary short enough for a test."""
    md = copy.deepcopy(EXAMPLES["ModelDeployment"])
    md["spec"]["model"] = {"name": "churn-classifier", "version": version}
    md["spec"]["serving"]["autoscaling"] = {"enabled": False}
    md["spec"]["serving"]["replicas"] = 1
    md["spec"]["strategy"]["canary"] = {
        "steps": [{"weight": 20, "pause": "6s"}, {"weight": 60, "pause": "6s"}],
        "analysis": {"interval": f"{INTERVAL_S}s", "failureLimit": FAILURE_LIMIT, "metrics": [
            {"name": "error-rate", "type": "errorRate", "threshold": 0.05},
            {"name": "p99-latency-seconds", "type": "latencyP99", "threshold": 0.25},
        ]},
    }
    if scale_down_delay is not None:
        md["spec"]["strategy"]["scaleDownDelay"] = scale_down_delay
    return md


def serve_v1(ml: Mlcycle, router_metrics, scale_down_delay: str | None = None) -> None:
    ml.create(EXAMPLES["MLProject"])
    router_metrics.set(ml.namespace, "churn", "v1", error_rate=0.0)
    ml.create(fast_canary_deployment("v1", scale_down_delay))
    wait_for(lambda: ml.status("ModelDeployment", "churn").get("stableVersion") == "v1"
             and ml.status("ModelDeployment", "churn").get("phase") == "Available", timeout=90, what="v1 serving")


def roll_out_v2(ml: Mlcycle) -> None:
    ml.objects.patch_namespaced_custom_object("mlcycle.io", "v1alpha1", ml.namespace, "modeldeployments", "churn",
                                              {"spec": {"model": {"version": "v2"}}})


def test_healthy_canary_is_promoted_on_live_metrics(ml: Mlcycle, router_metrics, prometheus):
    serve_v1(ml, router_metrics)
    router_metrics.set(ml.namespace, "churn", "v2", error_rate=0.0, latency_seconds=0.02)
    roll_out_v2(ml)
    status = wait_for(lambda: ml.status("ModelDeployment", "churn").get("stableVersion") == "v2"
                      and ml.status("ModelDeployment", "churn"), timeout=120, what="v2 promoted")
    assert status["trafficSummary"] == "v2=100" and status.get("candidateVersion") is None
    assert status["phase"] == "Available" and condition(status, "Ready")["status"] == "True"
    promoted = status["history"][-1]
    assert promoted["version"] == "v2" and promoted["outcome"] == "Promoted"
    events = ml.wait_event("churn", lambda e: e.startswith("Promoted"), "a Promoted Event")
    # Every step advanced only after an analysis run passed on measured values.
    assert any(e.startswith("StepAdvanced") for e in events), events
    assert any(e.startswith("Promoted") and "passed its analysis" in e for e in events), events
    # The analysis used real measurements: the error rate Prometheus computed for v2 was 0.
    assert prometheus.query(f'sum(mlcycle_router_requests_total{{namespace="{ml.namespace}",version="v2"}})')


def test_failing_canary_is_rolled_back_within_interval_times_failure_limit(ml: Mlcycle, router_metrics):
    # v2's servers drain for two intervals after the rollback: the reconciles of that time are what must not
    # retry it, and the one that removes them at the end proves they ran.
    serve_v1(ml, router_metrics, scale_down_delay=f"{INTERVAL_S * 2}s")
    router_metrics.set(ml.namespace, "churn", "v2", error_rate=0.5)
    roll_out_v2(ml)
    wait_for(lambda: (ml.status("ModelDeployment", "churn").get("trafficSummary") or "") == "v1=80 v2=20",
             timeout=90, what="v2 receiving its first canary share")
    status = wait_for(lambda: (ml.status("ModelDeployment", "churn").get("history") or [{}])[-1].get("outcome")
                      == "RolledBack" and ml.status("ModelDeployment", "churn"), timeout=90, what="v2 rolled back")
    assert status["stableVersion"] == "v1" and status["trafficSummary"] == "v1=100"
    assert condition(status, "Degraded")["status"] == "True"
    rolled_back = status["history"][-1]
    assert rolled_back["version"] == "v2" and "error-rate" in rolled_back["reason"]
    # Within interval x failureLimit, counted in analysis runs rather than seconds: the rollback came on the
    # failureLimit-th failed run, in the first canary step, with at most one run before it that had no data
    # yet (the first run is due one interval after the step begins), and runs one interval apart at least.
    runs = rolled_back["analysisRuns"]
    verdicts = [run["verdict"] for run in runs]
    assert verdicts.count("Fail") == FAILURE_LIMIT and verdicts[-1] == "Fail", runs
    assert len(runs) <= FAILURE_LIMIT + 1 and all(run.get("step", 0) == 0 for run in runs), runs
    times = [datetime.fromisoformat(run["time"]) for run in runs]
    assert all((b - a).total_seconds() >= INTERVAL_S for a, b in itertools.pairwise(times)), runs
    ml.wait_event("churn", lambda e: "RolledBack" in e, "a RolledBack Event")
    # A rolled-back version is not retried while the spec still asks for it: the operator reconciled it on its
    # two-second tick all through the drain, and the last of those reconciles, with the spec still asking for v2,
    # removed v2's servers and cleared status.retiring instead of starting a rollout.
    assert status.get("retiring") == ["v2"], status
    again = wait_for(lambda: not (s := ml.status("ModelDeployment", "churn")).get("retiring") and s, timeout=60,
                     what="v2's servers removed after scaleDownDelay")
    assert "churn-v-v2" not in {d.metadata.name for d in ml.apps.list_namespaced_deployment(ml.namespace).items}
    assert again["stableVersion"] == "v1" and again.get("candidateVersion") is None
    assert [h["outcome"] for h in again["history"]].count("RolledBack") == 1


def shadow_deployment(version: str) -> dict:
    md = fast_canary_deployment(version)
    md["spec"]["strategy"] = {"type": "Shadow", "shadow": {
        "percent": 10, "duration": "6s", "minAgreement": 0.95, "maxLatencyRatio": 1.5, "minSamples": 50}}
    return md


@pytest.mark.parametrize(("agreement", "outcome"), [(0.99, "Promoted"), (0.70, "RolledBack")])
def test_shadow_is_judged_on_the_routers_comparisons(ml: Mlcycle, router_metrics, agreement, outcome):
    ml.create(EXAMPLES["MLProject"])
    router_metrics.set(ml.namespace, "churn", "v1", error_rate=0.0)
    ml.create(shadow_deployment("v1"))
    wait_for(lambda: ml.status("ModelDeployment", "churn").get("phase") == "Available", timeout=90, what="v1")
    router_metrics.set(ml.namespace, "churn", "v2", agreement=agreement, requests_per_second=20)
    roll_out_v2(ml)
    wait_for(lambda: "shadow" in (ml.status("ModelDeployment", "churn").get("trafficSummary") or ""),
             timeout=60, what="v2 receiving mirrored traffic")
    assert ml.status("ModelDeployment", "churn")["trafficSummary"] == "v1=100 v2=0+10%shadow"
    def judged():
        status = ml.status("ModelDeployment", "churn")
        last = (status.get("history") or [{}])[-1]  # the first version's own entry comes before v2's
        return last.get("version") == "v2" and last.get("outcome") == outcome and status

    status = wait_for(judged, timeout=90, what=f"shadow of v2 {outcome}")
    entry = status["history"][-1]
    assert entry["version"] == "v2" and "agreement" in entry["reason"]
    assert status["stableVersion"] == ("v2" if outcome == "Promoted" else "v1")

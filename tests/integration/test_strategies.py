"""BlueGreen and Recreate rollouts on the real control plane, decided on live metrics from a real Prometheus.

BlueGreen: the preview runs beside the stable version with no weighted traffic and is switched to at once after
previewDuration when its analysis passes, rolled back when it fails, and held (saying why, with one Warning
Event) while nobody sends it test traffic. Recreate: a watch on the Deployments proves the old version's server
is gone before the new one's is created. And a canary judged on predictionDrift: the candidate's predictions
against the stable version's, from the router's per-version prediction histograms."""

from __future__ import annotations

import copy
import math
import threading
import time
from datetime import datetime, timedelta

import pytest
from kubernetes import watch
from prometheus_client import Counter

from mlcycle_operator.resources.common import LABEL_COMPONENT, LABEL_INSTANCE
from mlcycle_operator.resources.serving import version_name
from tests.integration.helpers import EXAMPLES, Mlcycle, condition, read_or_none, wait_for

pytestmark = pytest.mark.integration

INTERVAL_S, PREVIEW_S, FAILURE_LIMIT = 4, 6, 2
SERVERS = f"{LABEL_INSTANCE}=churn,{LABEL_COMPONENT}=model-server"


def deployment(version: str, strategy: dict) -> dict:
    """The example deployment pinned to a version, one replica, with the given strategy."""
    md = copy.deepcopy(EXAMPLES["ModelDeployment"])
    md["spec"]["model"] = {"name": "churn-classifier", "version": version}
    md["spec"]["serving"]["autoscaling"] = {"enabled": False}
    md["spec"]["serving"]["replicas"] = 1
    md["spec"]["strategy"] = strategy
    return md


BLUE_GREEN = {"type": "BlueGreen", "blueGreen": {
    "previewDuration": f"{PREVIEW_S}s",
    "analysis": {"interval": f"{INTERVAL_S}s", "failureLimit": FAILURE_LIMIT, "metrics": [
        {"name": "error-rate", "type": "errorRate", "threshold": 0.05},
        {"name": "p99-latency-seconds", "type": "latencyP99", "threshold": 0.25},
    ]},
}}


def serve_v1(ml: Mlcycle, router_metrics, strategy: dict) -> None:
    ml.create(EXAMPLES["MLProject"])
    router_metrics.set(ml.namespace, "churn", "v1", error_rate=0.0)
    ml.create(deployment("v1", strategy))
    wait_for(lambda: ml.status("ModelDeployment", "churn").get("stableVersion") == "v1"
             and ml.status("ModelDeployment", "churn").get("phase") == "Available", timeout=90, what="v1 serving")


def roll_out_v2(ml: Mlcycle) -> None:
    ml.objects.patch_namespaced_custom_object("mlcycle.io", "v1alpha1", ml.namespace, "modeldeployments", "churn",
                                              {"spec": {"model": {"version": "v2"}}})


def history_of(status: dict, version: str) -> list[dict]:
    return [h for h in status.get("history") or [] if h["version"] == version]


def warning_events(ml: Mlcycle, reason: str) -> list[str]:
    return [e.message for e in ml.core.list_namespaced_event(
        ml.namespace, field_selector=f"involvedObject.name=churn,reason={reason}").items if e.type == "Warning"]


def follow(ml: Mlcycle, until, timeout: float, what: str) -> tuple[dict, list[str]]:
    """Poll the status until `until(status)`; every distinct traffic summary seen on the way, in order."""
    summaries: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = ml.status("ModelDeployment", "churn")
        summary = status.get("trafficSummary") or ""
        if not summaries or summaries[-1] != summary:
            summaries.append(summary)
        if until(status):
            return status, summaries
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; traffic seen: {summaries}")


def preview_ready(ml: Mlcycle) -> dict:
    """Wait for the preview's server to be ready (its step began), and check it runs beside v1 with no traffic."""
    status = wait_for(lambda: ((s := ml.status("ModelDeployment", "churn")).get("rollout") or {}).get("stepStartedAt")
                      and s, timeout=90, what="the v2 preview ready")
    for name in (version_name("churn", "v1"), version_name("churn", "v2")):
        assert read_or_none(ml.apps.read_namespaced_deployment, name, ml.namespace) is not None, name
        assert read_or_none(ml.core.read_namespaced_service, name, ml.namespace) is not None, name
    assert status["trafficSummary"] == "v1=100 v2=0"
    assert [(t["version"], t["weight"], t["role"]) for t in status["traffic"]] == [
        ("v1", 100, "stable"), ("v2", 0, "candidate")]
    return status


def test_blue_green_healthy_preview_is_switched_at_once_after_the_preview(ml: Mlcycle, router_metrics, prometheus):
    serve_v1(ml, router_metrics, BLUE_GREEN)
    # Test traffic to the preview (x-mlcycle-variant: v2 through the router): healthy.
    router_metrics.set(ml.namespace, "churn", "v2", error_rate=0.0, latency_seconds=0.02)
    roll_out_v2(ml)
    started = preview_ready(ml)["rollout"]["stepStartedAt"]
    status, summaries = follow(ml, lambda s: s.get("stableVersion") == "v2", 90, "v2 promoted")
    # All at once: from the preview at weight 0 straight to v2 alone, never a split.
    assert summaries[0] == "v1=100 v2=0" and summaries[-1] == "v2=100", summaries
    assert set(summaries) <= {"v1=100 v2=0", "v2=100"}, summaries
    promoted = history_of(status, "v2")
    assert [h["outcome"] for h in promoted] == ["Promoted"], status["history"]
    assert "blue-green preview of v2 passed its analysis" in promoted[0]["reason"]
    # Not before the preview was over, and on measured values.
    assert _time(promoted[0]["time"]) >= _time(started) + timedelta(seconds=PREVIEW_S)
    deciding = promoted[0]["analysisRuns"][-1]
    assert deciding["verdict"] == "Pass" and all(m["value"] is not None for m in deciding["measurements"])
    assert status.get("candidateVersion") is None and condition(status, "Ready")["status"] == "True"
    assert prometheus.query(f'sum(mlcycle_router_requests_total{{namespace="{ml.namespace}",version="v2"}})')


def test_blue_green_failing_preview_is_rolled_back_and_never_got_traffic(ml: Mlcycle, router_metrics):
    serve_v1(ml, router_metrics, BLUE_GREEN)
    router_metrics.set(ml.namespace, "churn", "v2", error_rate=0.5)
    roll_out_v2(ml)
    preview_ready(ml)
    status, summaries = follow(ml, lambda s: [h["outcome"] for h in history_of(s, "v2")] == ["RolledBack"],
                               INTERVAL_S * (FAILURE_LIMIT + 1) + 30, "v2 rolled back")
    assert set(summaries) <= {"v1=100 v2=0", "v1=100"}, summaries
    assert status["stableVersion"] == "v1" and status["trafficSummary"] == "v1=100"
    assert "error-rate" in history_of(status, "v2")[0]["reason"]
    assert condition(status, "Degraded")["status"] == "True"
    assert warning_events(ml, "RolledBack")


def test_blue_green_preview_without_traffic_says_where_to_send_it_then_goes_on(ml: Mlcycle, router_metrics):
    serve_v1(ml, router_metrics, BLUE_GREEN)
    roll_out_v2(ml)  # and nobody sends v2 any request
    preview_ready(ml)

    def held_for_traffic(status: dict) -> bool:
        return (condition(status, "Progressing") or {}).get("reason") == "PreviewWithoutTraffic"

    status, summaries = follow(ml, held_for_traffic, PREVIEW_S + 2 * INTERVAL_S + 20, "PreviewWithoutTraffic")
    message = condition(status, "Progressing")["message"]
    for words in ("received no traffic", status["endpoint"], "x-mlcycle-variant: v2", "v1 keeps all traffic"):
        assert words in message, message
    assert status["phase"] == "Progressing" and status["trafficSummary"] == "v1=100 v2=0"
    # It keeps holding, unmeasured runs pile up, and it says so once.
    time.sleep(2 * INTERVAL_S)
    status = ml.status("ModelDeployment", "churn")
    assert status["stableVersion"] == "v1" and status["rollout"]["candidateVersion"] == "v2"
    assert held_for_traffic(status)
    runs = status["rollout"]["analysisRuns"]
    assert len(runs) >= 3 and {r["verdict"] for r in runs} == {"Inconclusive"}
    assert len(warning_events(ml, "PreviewWithoutTraffic")) == 1, warning_events(ml, "PreviewWithoutTraffic")
    # Test traffic arrives: the next conclusive run promotes as usual.
    router_metrics.set(ml.namespace, "churn", "v2", error_rate=0.0, latency_seconds=0.02)
    status, summaries = follow(ml, lambda s: s.get("stableVersion") == "v2", 60, "v2 promoted")
    assert set(summaries) <= {"v1=100 v2=0", "v2=100"}, summaries
    assert [h["outcome"] for h in history_of(status, "v2")] == ["Promoted"]


class ServerWatch:
    """Every ADDED/DELETED of the model-server Deployments, in the API server's order, from a watch."""

    def __init__(self, ml: Mlcycle) -> None:
        self.ml = ml
        listed = ml.apps.list_namespaced_deployment(ml.namespace, label_selector=SERVERS)
        self.live = {d.metadata.name for d in listed.items}
        self.moments = [frozenset(self.live)]  # the set of server Deployments after each change
        self.log: list[str] = []
        self._version = listed.metadata.resource_version
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            # Short watches resumed from the last resourceVersion: no event is missed, and stop() takes effect.
            for event in watch.Watch().stream(self.ml.apps.list_namespaced_deployment, self.ml.namespace,
                                              label_selector=SERVERS, resource_version=self._version,
                                              timeout_seconds=2):
                obj = event["object"]
                self._version = obj.metadata.resource_version
                name = obj.metadata.name
                if event["type"] == "ADDED" and name not in self.live:
                    self.live.add(name)
                elif event["type"] == "DELETED":
                    self.live.discard(name)
                else:
                    continue
                self.log.append(f"{event['type']} {name}")
                self.moments.append(frozenset(self.live))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_recreate_removes_v1_before_creating_v2(ml: Mlcycle, router_metrics):
    serve_v1(ml, router_metrics, {"type": "Recreate"})
    v1, v2 = version_name("churn", "v1"), version_name("churn", "v2")
    servers = ServerWatch(ml)
    assert servers.live == {v1}
    try:
        roll_out_v2(ml)
        status = wait_for(lambda: (s := ml.status("ModelDeployment", "churn")).get("stableVersion") == "v2"
                          and s.get("phase") == "Available" and s, timeout=90, what="v2 Available")
        wait_for(lambda: servers.live == {v2}, timeout=10, what="the watch to see v2 alone")
    finally:
        servers.stop()
    # Never a moment with both: v1's Deployment was deleted before v2's was created.
    assert not any({v1, v2} <= moment for moment in servers.moments), servers.log
    assert servers.log == [f"DELETED {v1}", f"ADDED {v2}"], servers.log
    assert status["trafficSummary"] == "v2=100" and condition(status, "Ready")["status"] == "True"
    promoted = history_of(status, "v2")
    assert [h["outcome"] for h in promoted] == ["Promoted"]
    assert "removed the servers of v1 before creating those of v2" in promoted[0]["reason"]
    events = ml.wait_event("churn", lambda e: e.startswith("RolloutStarted"), "a RolloutStarted Event")
    started = [e for e in events if e.startswith("RolloutStarted")]
    assert started and "removing the servers of v1 before those of v2 are created" in started[0], started


class PredictionBins:
    """The router's per-version prediction histograms (mlcycle_router_feature_values_total, feature="prediction"),
    exported beside the synthetic router metrics with shares per bin that the test sets."""

    def __init__(self, router_metrics) -> None:
        self.counter = Counter("mlcycle_router_feature_values", "Live values per feature and reference bin.",
                               ["namespace", "deployment", "version", "feature", "bin"],
                               registry=router_metrics.registry)
        self.shares: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def set(self, namespace: str, version: str, shares: list[float]) -> None:
        with self._lock:
            self.shares[namespace, version] = shares

    def _run(self) -> None:
        while not self._stop.wait(0.1):  # 10 predictions per version per tick, about 100 a second
            with self._lock:
                items = list(self.shares.items())
            for (namespace, version), shares in items:
                for index, share in enumerate(shares):
                    self.counter.labels(namespace, "churn", version, "prediction", str(index)).inc(10 * share)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def prediction_bins(router_metrics):
    bins = PredictionBins(router_metrics)
    yield bins
    bins.stop()


def test_canary_prediction_drift_is_measured_against_the_stable_version(ml: Mlcycle, router_metrics,
                                                                         prediction_bins):
    stable_shares, drifted_shares = [0.25, 0.25, 0.25, 0.25], [0.1, 0.1, 0.2, 0.6]
    expected = sum((c - r) * math.log(c / r) for r, c in zip(stable_shares, drifted_shares, strict=True))
    canary = {"type": "Canary", "canary": {
        "steps": [{"weight": 50, "pause": "30s"}],
        "analysis": {"interval": f"{INTERVAL_S}s", "failureLimit": 1, "metrics": [
            {"name": "prediction-drift", "type": "predictionDrift", "threshold": 0.2}]},
    }}
    prediction_bins.set(ml.namespace, "v1", stable_shares)
    serve_v1(ml, router_metrics, canary)
    prediction_bins.set(ml.namespace, "v2", drifted_shares)
    roll_out_v2(ml)
    status = wait_for(lambda: history_of(s := ml.status("ModelDeployment", "churn"), "v2") and s,
                      timeout=60, what="v2 judged on prediction drift")
    rolled_back = history_of(status, "v2")[0]
    assert rolled_back["outcome"] == "RolledBack" and "prediction-drift" in rolled_back["reason"]
    measured = rolled_back["analysisRuns"][-1]["measurements"][0]
    # PSI of the two histograms: the shares are what the exporter generates, whatever the window caught.
    assert measured["value"] == pytest.approx(expected, rel=0.05) and measured["passed"] is False


def _time(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))

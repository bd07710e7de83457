"""The data plane as one system, every part a real process: two versions trained on the churn data with Ray,
served by `bentoml serve`, behind the router at 90/10 with 10% shadow, all scraped by a real Prometheus; then
reference-like traffic and drifted traffic, judged by the drift monitor from the router's histograms.

What it pins down: every client answer is a 200; the router's per-version counts equal what the clients saw
and what each model server scored; the shadow's agreement rate is the one the two models really have; and the
monitor flags the shifted features, only those, and only once they shift.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.harness.cluster import free_port
from tests.harness.prometheus import Prometheus
from tests.harness.pytest_support import unavailable
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration

NAMESPACE, DEPLOYMENT = "ml", "churn"
ROWS = 4000
SHIFTED = ("monthly_charges", "data_usage_gb")
REQUESTS = 1000
TOLERANCE = 0.05  # the router's default shadow agreement tolerance
BINS = "mlcycle_router_feature_values_total"


def records_of(frame: pd.DataFrame, features: list[str]) -> list[dict[str, Any]]:
    rows = frame[features].astype(object).where(frame[features].notna(), None)
    return rows.to_dict("records")


class Proc:
    """A child process in its own group, with its output in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)

    def wait_ready(self, url: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{self.log.name} exited {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        pytest.fail(f"{url} not ready within {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def train(workdir: Path, env: dict[str, str], data: Path, name: str, params: dict[str, Any]) -> dict[str, Any]:
    config = {
        "kind": "TrainingJob", "name": name, "namespace": NAMESPACE, "project": "churn", "metric": "roc_auc",
        "mode": "max", "report": {"statusField": "result"},
        "storage": {"uri": f"file://{workdir / 'store'}", "modelPath": "churn/models/churn-classifier"},
        "spec": {"project": "churn",
                 "data": {"source": {"uri": str(data), "timestampColumn": "event_timestamp",
                                     "entityColumns": ["customer_id"]}, "labelColumn": "churned"},
                 "validation": {"minRows": 1000},
                 "model": {"framework": "xgboost", "params": {"tree_method": "hist", **params}},
                 "evaluation": {"gates": {"minMetric": 0.6}},
                 "output": {"modelName": "churn-classifier"}}}
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(config))
    done = subprocess.run([sys.executable, "-m", "mlcycle_runtime.train", "--config", str(path)], env=env,
                          cwd=workdir, capture_output=True, text=True, timeout=600)
    report = json.loads((workdir / "reports" / f"trainingjob-{name}.json").read_text())
    assert done.returncode == 0 and report["phase"] == "Succeeded", (report.get("error"), done.stderr[-3000:])
    return report


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`, from a Prometheus text page."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def send(router_url: str, records: list[dict[str, Any]]) -> list[httpx.Response]:
    with httpx.Client(base_url=router_url, timeout=30) as http:
        return [http.post("/predict", json={"records": [record]}) for record in records]


class Pending(dict):
    """A predicate's "not yet" that still shows what it saw: falsy for wait_for, printed when it times out."""

    def __bool__(self) -> bool:
        return False


def binned(router_url: str) -> float:
    """Requests whose after-answer work the router has done (each bins one 'prediction' value, and its mirrors
    are spawned in the same step), all versions together."""
    return metric(httpx.get(f"{router_url}/metrics").text, BINS, feature="prediction")


def send_binned_and_scraped(router_url: str, prometheus: Prometheus, records: list[dict[str, Any]]) -> None:
    """Send the records; return once the router has binned every one and Prometheus has scraped that count."""
    before = binned(router_url)
    assert all(r.status_code == 200 for r in send(router_url, records))
    expected = before + len(records)
    wait_for(lambda: binned(router_url) == expected, timeout=30, what=f"the router to bin {expected:.0f} requests",
             every=0.2)
    query = f'sum({BINS}{{feature="prediction"}})'
    wait_for(lambda: (result := prometheus.query(query)) and float(result[0]["value"][1]) == expected,
             timeout=30, what=f"Prometheus to scrape {expected:.0f} binned requests", every=0.3)


def run_monitor(workdir: Path, env: dict[str, str], version: str, reference_uri: str, prometheus_url: str,
                window: str) -> dict[str, Any]:
    config = {"kind": "DriftMonitor", "name": "churn", "namespace": NAMESPACE, "deployment": DEPLOYMENT,
              "version": version, "referenceUri": reference_uri, "prometheusUrl": prometheus_url,
              "report": {"statusField": "report"},
              "spec": {"deployment": DEPLOYMENT, "window": window, "schedule": "1m", "minSamples": 200,
                       "prediction": True, "tests": {"numeric": {"method": "psi", "threshold": 0.2},
                                                     "categorical": {"method": "psi", "threshold": 0.2}}}}
    path = workdir / f"monitor-{window}.json"
    path.write_text(json.dumps(config))
    done = subprocess.run([sys.executable, "-m", "mlcycle_runtime.drift", "--config", str(path), "--once"],
                          env=env, cwd=workdir, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((workdir / "reports" / "driftmonitor-churn.json").read_text())


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    if shutil.which("prometheus") is None:
        unavailable("prometheus", "the prometheus binary is not on PATH (make system-deps)")
    from examples.churn.generate import Drift, generate, write

    workdir = tmp_path_factory.mktemp("data-plane")
    env = {**os.environ, "MLCYCLE_REPORT_DIR": str(workdir / "reports"), "BENTOML_HOME": str(workdir / "bentoml")}
    for var in ("KUBERNETES_SERVICE_HOST", "RAY_ADDRESS", "MLCYCLE_BIND_HOST"):
        env.pop(var, None)
    data = Path(write(workdir / "data", rows=ROWS)["customers"])
    v1 = train(workdir, env, data, "churn-v1", {"max_depth": 3, "eta": 0.3, "num_boost_round": 30})
    v2 = train(workdir, env, data, "churn-v2", {"max_depth": 6, "eta": 0.1, "num_boost_round": 60})

    procs: list[Proc] = []
    prometheus = None
    try:
        servers = {}
        for report in (v1, v2):
            model = report["model"]
            port = free_port()
            conf = workdir / f"serve-{model['version']}.json"
            conf.write_text(json.dumps({"kind": "ModelDeployment", "name": DEPLOYMENT, "namespace": NAMESPACE,
                                        "model": model, "port": port, "batching": {"enabled": False}}))
            proc = Proc([sys.executable, "-m", "mlcycle_runtime.serve", "--config", str(conf), "--host",
                         "127.0.0.1"], workdir / f"serve-{model['version']}.log", env)
            procs.append(proc)
            servers[model["version"]] = f"http://127.0.0.1:{port}"
        for proc, url in zip(procs, servers.values(), strict=True):
            proc.wait_ready(f"{url}/readyz")

        router_port = free_port()
        router_conf = workdir / "router.json"
        router_conf.write_text(json.dumps({
            "kind": "ModelDeployment", "name": DEPLOYMENT, "namespace": NAMESPACE, "port": router_port,
            "referenceUri": v1["model"]["uri"],
            "routes": [{"version": v1["model"]["version"], "weight": 90, "role": "stable",
                        "url": servers[v1["model"]["version"]]},
                       {"version": v2["model"]["version"], "weight": 10, "role": "candidate", "shadowPercent": 10,
                        "url": servers[v2["model"]["version"]]}]}))
        router = Proc([sys.executable, "-m", "mlcycle_runtime.router", "--config", str(router_conf), "--host",
                       "127.0.0.1"], workdir / "router.log", env)
        procs.append(router)
        router_url = f"http://127.0.0.1:{router_port}"
        router.wait_ready(f"{router_url}/readyz")

        prometheus = Prometheus(workdir / "prometheus", targets=[
            f"127.0.0.1:{router_port}", *(url.removeprefix("http://") for url in servers.values())])
        prometheus.start()

        frame = generate(rows=ROWS)
        features = [f["name"] for f in json.loads(
            (Path(v1["model"]["uri"].removeprefix("file://")) / "model.json").read_text())["features"]]
        # Clean traffic is drawn from the training period itself, so nothing but the injected shift can differ.
        sample = frame.sample(REQUESTS, random_state=11)
        drifted = generate(rows=ROWS, drift=Drift(start="2026-01-01", covariate=dict.fromkeys(SHIFTED, 2.0)))
        yield {"workdir": workdir, "env": env, "v1": v1["model"], "v2": v2["model"], "servers": servers,
               "router": router_url, "prometheus": prometheus, "features": features,
               "clean": records_of(sample, features), "drifted": records_of(drifted.loc[sample.index], features)}
    finally:
        for proc in procs:
            proc.stop()
        if prometheus is not None:
            prometheus.stop()


def test_traffic_is_split_mirrored_and_counted_the_same_everywhere(plane):
    v1, v2 = plane["v1"]["version"], plane["v2"]["version"]
    before = binned(plane["router"])
    responses = send(plane["router"], plane["clean"])
    assert [r.status_code for r in responses].count(200) == REQUESTS, {r.status_code for r in responses}
    answered = Counter(r.headers["x-mlcycle-variant"] for r in responses)
    assert set(answered) == {v1, v2}
    assert abs(answered[v2] - 0.1 * REQUESTS) <= 4 * math.sqrt(REQUESTS * 0.1 * 0.9)

    # Mirrored calls are answered after the client's. Wait until the router has done its after-answer work for
    # every request (mirrors are spawned there), the candidate's server has scored no mirror the router has not
    # counted yet, and the comparisons have stopped moving.
    seen: list[float] = []

    def settled() -> str | Pending:
        page = httpx.get(f"{plane['router']}/metrics").text
        state = {"binned": metric(page, BINS, feature="prediction") - before,
                 "routed": metric(page, "mlcycle_router_requests_total", version=v2, code="200"),
                 "served": metric(httpx.get(f"{plane['servers'][v2]}/metrics").text,
                                  "mlcycle_server_predictions_total", version=v2),
                 "compared": metric(page, "mlcycle_router_shadow_comparisons_total", version=v2)}
        done = (state["binned"] == REQUESTS and state["served"] == state["routed"]
                and seen[-1:] == [state["compared"]])
        seen.append(state["compared"])
        return page if done else Pending(state)

    page = wait_for(settled, timeout=30, what="the router to finish mirroring", every=0.2)
    shadow = {result: metric(page, "mlcycle_router_shadow_comparisons_total", version=v2, result=result)
              for result in ("agree", "disagree", "error")}
    mirrored = sum(shadow.values())
    assert shadow["error"] == 0
    assert abs(mirrored - 0.1 * answered[v1]) <= 4 * math.sqrt(answered[v1] * 0.1 * 0.9)
    # Per version, the router counts what clients saw (plus the mirrored copies the candidate answered) ...
    assert metric(page, "mlcycle_router_requests_total", version=v1, code="200") == answered[v1]
    assert metric(page, "mlcycle_router_requests_total", version=v2, code="200") == answered[v2] + mirrored
    # ... which is exactly what each model server scored.
    for version, expected in ((v1, answered[v1]), (v2, answered[v2] + mirrored)):
        server_page = httpx.get(f"{plane['servers'][version]}/metrics").text
        assert metric(server_page, "mlcycle_server_predictions_total", version=version) == expected

    # Agreement: the router's rate is the one the two models really have on these requests.
    scores = {v: np.array(httpx.post(f"{plane['servers'][v]}/predict", json={"records": plane["clean"]},
                                     timeout=60).json()["predictions"]) for v in (v1, v2)}
    rate = float(np.mean(np.abs(scores[v1] - scores[v2]) <= TOLERANCE))
    assert 0.0 < rate < 1.0, "the two versions must differ somewhere for agreement to mean anything"
    assert abs(shadow["agree"] - rate * mirrored) <= 4 * math.sqrt(mirrored * rate * (1 - rate)) + 1

    # Prometheus scraped the same numbers: requests and latency observations per version.
    prometheus = plane["prometheus"]
    for series, expected in ((f'mlcycle_router_requests_total{{version="{v1}"}}', answered[v1]),
                             (f'mlcycle_router_request_duration_seconds_count{{version="{v1}"}}', answered[v1]),
                             (f'mlcycle_router_requests_total{{version="{v2}"}}', answered[v2] + mirrored)):
        query = f"sum({series})"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            result = prometheus.query(query)
            if result and float(result[0]["value"][1]) == expected:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"Prometheus: {query} never reached {expected}: {prometheus.query(query)}")


def test_the_monitor_flags_the_shifted_features_and_only_them(plane):
    v1 = plane["v1"]
    workdir, env, prometheus = plane["workdir"], plane["env"], plane["prometheus"]
    # Reference-like traffic (the previous test's and more): no drift.
    send_binned_and_scraped(plane["router"], prometheus, plane["clean"][:300])
    clean = run_monitor(workdir, env, v1["version"], v1["uri"], prometheus.url, "10m")
    assert clean["samples"] >= 200 and clean["drifted"] is False, clean
    scored = {f["name"] for f in clean["features"]}
    assert set(plane["features"]) <= scored

    # Then shifted traffic: the same customers with two features moved by two standard deviations. The window
    # holds both kinds; every unshifted feature keeps exactly its distribution, the shifted ones cannot hide.
    send_binned_and_scraped(plane["router"], prometheus, plane["drifted"])
    report = run_monitor(workdir, env, v1["version"], v1["uri"], prometheus.url, "10m")
    assert report["drifted"] is True and report["samples"] > clean["samples"], report
    flagged = set(report["driftedFeatures"]) - {"prediction"}
    assert flagged == set(SHIFTED), report["features"]
    by_name = {f["name"]: f for f in report["features"]}
    assert all(by_name[name]["score"] > 2 * by_name[name]["threshold"] for name in SHIFTED)
    assert all(by_name[name]["score"] < by_name[name]["threshold"] / 2 for name in set(plane["features"]) - flagged)

"""The drift monitor as a real process against a real Prometheus that scrapes an exporter of the router's feature
bins, whose increments this test controls: reference-like traffic for most features, shifted for two; and the
service mode's /metrics, /livez and /readyz. Also: the one-line reasons for a bad config, a missing reference
and an unreachable Prometheus."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from mlcycle_runtime import reference, storage
from mlcycle_runtime.reference import MISSING, PREDICTION, Reference
from tests.harness.cluster import free_port
from tests.harness.prometheus import Prometheus
from tests.harness.pytest_support import unavailable
from tests.integration.helpers import wait_for

NAMESPACE, DEPLOYMENT, VERSION, MONITOR = "team-a", "churn", "v3", "churn-drift"
NUMERIC = ["tenure", "charges", "calls", "usage"]
PLANS = ["basic", "pro", "gold"]
REQUESTS = 4000
SHIFTED = {"charges", "plan"}


def draw(rng: np.random.Generator, n: int, shifted: frozenset[str] = frozenset()) -> dict[str, np.ndarray]:
    """Rows of the training distribution; the named features come from a moved one."""
    rows = {
        "tenure": rng.gamma(2.0, 12.0, n),
        "charges": rng.normal(70.0, 20.0, n) + (25.0 if "charges" in shifted else 0.0),
        "calls": rng.poisson(3.0, n).astype(float),  # ties: a spike per integer
        "usage": np.where(rng.random(n) < 0.05, np.nan, rng.lognormal(1.0, 0.5, n)),  # 5% missing
        "plan": rng.choice(PLANS, n, p=[0.2, 0.3, 0.5] if "plan" in shifted else [0.6, 0.3, 0.1]),
    }
    rows[PREDICTION] = 1 / (1 + np.exp(-(rows["charges"] - 70.0) / 20.0))
    return rows


def build_reference(rng: np.random.Generator) -> Reference:
    rows = draw(rng, 50_000)
    features = {f: reference.histogram_numeric(rows[f], reference.quantile_edges(rows[f])) for f in NUMERIC}
    features["plan"] = reference.histogram_categorical(list(rows["plan"]), PLANS)
    scores = rows[PREDICTION]
    return Reference(rows=50_000, features=features,
                     prediction=reference.histogram_numeric(scores, reference.quantile_edges(scores)))


def publish_version(ref: Reference, directory: Path) -> str:
    """A complete model version (model card, reference, model export) through the storage module."""
    local = directory / "build"
    local.mkdir()
    card = {"name": "churn", "version": VERSION, "framework": "xgboost", "task": "binary",
            "schema": [{"name": f, "kind": "numeric"} for f in NUMERIC]
            + [{"name": "plan", "kind": "categorical", "categories": PLANS}]}
    (local / storage.MODEL_CARD).write_text(json.dumps(card))
    (local / storage.REFERENCE).write_text(json.dumps(ref.to_json()))
    (local / storage.BENTO_EXPORT).write_bytes(b"not read by the monitor")
    uri = storage.version_uri(f"file://{directory}/storage", "churn/models/churn", VERSION)
    storage.publish(local, uri)
    return uri


class FeatureBins:
    """The router's feature-bin counters on a loopback /metrics, incremented only when the test says so."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.counter = Counter("mlcycle_router_feature_values", "Live values per reference bin.",
                               ["namespace", "deployment", "version", "feature", "bin"], registry=self.registry)
        self.port = free_port()
        self.server, self.thread = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def declare(self, ref: Reference, version: str) -> None:
        """Every series at zero first, so that increase() counts the first requests too."""
        for name in [*ref.features, PREDICTION]:
            for label in [*map(str, range(ref.histogram(name).bins)), MISSING]:
                self.counter.labels(NAMESPACE, DEPLOYMENT, version, name, label)

    def send(self, ref: Reference, version: str, rows: dict[str, np.ndarray]) -> None:
        """Bin a batch of requests like the router does and add them to the counters."""
        for name, values in rows.items():
            hist = ref.histogram(name)
            labels = [reference.bin_value(hist, v.item() if hasattr(v, "item") else v) for v in values]
            for label, count in zip(*np.unique(labels, return_counts=True), strict=True):
                self.counter.labels(NAMESPACE, DEPLOYMENT, version, name, str(label)).inc(int(count))

    def stop(self) -> None:
        self.server.shutdown()


def run_monitor(config: dict, directory: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    path = directory / f"config-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "MLCYCLE_REPORT_DIR": str(directory / "reports")}
    return subprocess.run([sys.executable, "-m", "mlcycle_runtime.drift", "--config", str(path), *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=directory)


PSI_AND_CHI2 = {"numeric": {"method": "psi", "threshold": 0.2}, "categorical": {"method": "chiSquared",
                                                                                "threshold": 0.01}}


def monitor_config(reference_uri: str, prometheus_url: str, **tests: dict) -> dict:
    return {"kind": "DriftMonitor", "name": MONITOR, "namespace": NAMESPACE, "deployment": DEPLOYMENT,
            "version": VERSION, "referenceUri": reference_uri, "prometheusUrl": prometheus_url, "port": free_port(),
            "report": {"statusField": "report"},
            "spec": {"deployment": DEPLOYMENT, "window": "5m", "schedule": "1s", "minSamples": 500,
                     "prediction": True, "tests": tests or PSI_AND_CHI2}}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """(reference URI, Prometheus URL, directory): Prometheus has scraped v3's traffic and another version's."""
    if shutil.which("prometheus") is None:
        unavailable("prometheus", "the prometheus binary is not on PATH (Debian package 'prometheus'; make "
                                  "system-deps)")
    directory = tmp_path_factory.mktemp("drift")
    rng = np.random.default_rng(42)
    ref = build_reference(rng)
    uri = publish_version(ref, directory)
    bins = FeatureBins()
    prometheus = Prometheus(directory / "prometheus", targets=[bins.target])
    try:
        for version in (VERSION, "v2"):
            bins.declare(ref, version)
        prometheus.start()
        wait_until(lambda: prometheus.query(f'mlcycle_router_feature_values_total{{version="{VERSION}"}}'),
                   "Prometheus to scrape the zeroed series", prometheus)
        # A second scrape at zero: increase() then starts from a known zero.
        zeroes = f'min(count_over_time(mlcycle_router_feature_values_total{{version="{VERSION}"}}[5m]))'
        wait_until(lambda: (r := prometheus.query(zeroes)) and float(r[0]["value"][1]) >= 2,
                   "Prometheus to scrape the zeroed series twice", prometheus)
        # v3 gets reference-like traffic except for two features; v2 (not monitored) is shifted everywhere.
        # Each batch is scraped before the next one is sent (one scrape reads both versions).
        scraped = f'sum(mlcycle_router_feature_values_total{{version="{VERSION}",feature="prediction"}})'
        for batch in range(1, 5):
            bins.send(ref, VERSION, draw(rng, REQUESTS // 4, frozenset(SHIFTED)))
            bins.send(ref, "v2", draw(rng, REQUESTS // 4, frozenset({"tenure", "calls", "usage"})))
            wait_until(lambda n=batch * (REQUESTS // 4): (r := prometheus.query(scraped))
                       and float(r[0]["value"][1]) == n, f"Prometheus to scrape batch {batch}", prometheus)
        total = f'sum(increase(mlcycle_router_feature_values_total{{version="{VERSION}",feature="prediction"}}[5m]))'
        wait_until(lambda: (r := prometheus.query(total)) and float(r[0]["value"][1]) >= REQUESTS,
                   "Prometheus to see every request", prometheus)
        yield uri, prometheus.url, directory
    finally:
        prometheus.stop()
        bins.stop()


def wait_until(predicate, what: str, prometheus: Prometheus, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}; Prometheus log:\n{prometheus.log_tail()}")


def read_report(directory: Path) -> dict:
    return json.loads((directory / "reports" / f"driftmonitor-{MONITOR}.json").read_text())


def test_once_flags_exactly_the_shifted_features(live: tuple[str, str, Path]) -> None:
    uri, prometheus_url, directory = live
    done = run_monitor(monitor_config(uri, prometheus_url), directory, "--once")
    assert done.returncode == 0, done.stderr
    report = read_report(directory)
    assert report["version"] == VERSION and report["window"] == "5m" and report["time"].endswith("Z")
    assert REQUESTS <= report["samples"] <= REQUESTS * 1.3, report  # increase() extrapolates a little
    # The model's scores follow charges, so the predictions drifted with it: the monitor must say so too.
    assert sorted(report["driftedFeatures"]) == sorted([*SHIFTED, PREDICTION]), report
    assert report["drifted"] is True
    scores = {f["name"]: f for f in report["features"]}
    assert set(scores) == {*NUMERIC, "plan", PREDICTION}
    for name in ("tenure", "calls", "usage"):
        assert scores[name]["method"] == "psi" and scores[name]["score"] < 0.05, report
    assert scores["charges"]["score"] > 0.5  # a shift of 1.25 standard deviations
    assert scores["plan"]["method"] == "chiSquared" and scores["plan"]["score"] < 1e-9
    assert scores[PREDICTION]["score"] > 0.5


def test_once_with_p_value_tests(live: tuple[str, str, Path]) -> None:
    uri, prometheus_url, directory = live
    tests = {"numeric": {"method": "ks", "threshold": 0.01}, "categorical": {"method": "jensenShannon",
                                                                            "threshold": 0.1}}
    config = monitor_config(uri, prometheus_url, **tests)
    config["spec"]["features"] = ["tenure", "charges", "plan"]
    config["spec"]["prediction"] = False
    done = run_monitor(config, directory, "--once")
    assert done.returncode == 0, done.stderr
    report = read_report(directory)
    scores = {f["name"]: f for f in report["features"]}
    assert list(scores) == ["tenure", "charges", "plan"]
    assert scores["tenure"]["method"] == "ks" and scores["tenure"]["score"] > 0.01  # a p-value: high is no drift
    assert scores["charges"]["score"] < 1e-6 and scores["charges"]["drifted"]
    assert scores["plan"]["method"] == "jensenShannon" and scores["plan"]["score"] > 0.1
    assert sorted(report["driftedFeatures"]) == ["charges", "plan"]


def test_service_exports_gauges_and_probes(live: tuple[str, str, Path]) -> None:
    uri, prometheus_url, directory = live
    config = monitor_config(uri, prometheus_url)
    path = directory / "service.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "MLCYCLE_REPORT_DIR": str(directory / "service-reports"),
           "MLCYCLE_DRIFT_HOST": "127.0.0.1"}
    log = open(directory / "service.log", "wb")  # noqa: SIM115 (closed after the process)
    process = subprocess.Popen([sys.executable, "-m", "mlcycle_runtime.drift", "--config", str(path)],
                               stdout=log, stderr=subprocess.STDOUT, env=env, cwd=directory)
    base = f"http://127.0.0.1:{config['port']}"
    try:
        deadline, body = time.monotonic() + 60, ""
        while time.monotonic() < deadline and "mlcycle_drift_detected{" not in body:
            assert process.poll() is None, (directory / "service.log").read_text()
            with contextlib.suppress(httpx.TransportError):
                body = httpx.get(f"{base}/metrics", timeout=2).text
            time.sleep(0.3)
        assert httpx.get(f"{base}/livez").status_code == 200
        assert httpx.get(f"{base}/readyz").status_code == 200
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(body) for s in family.samples}
        detected = {dict(k[1])["feature"]: v for k, v in samples.items() if k[0] == "mlcycle_drift_detected"}
        assert detected == {**dict.fromkeys([*NUMERIC, "plan"], 0.0), **dict.fromkeys([*SHIFTED, PREDICTION], 1.0)}
        score_labels = {"namespace": NAMESPACE, "deployment": DEPLOYMENT, "version": VERSION, "feature": "charges"}
        assert samples[("mlcycle_drift_score", tuple(sorted(score_labels.items())))] > 0.5
        window = samples[("mlcycle_drift_window_samples", (("monitor", MONITOR), ("namespace", NAMESPACE)))]
        assert window >= REQUESTS
        report = json.loads((directory / "service-reports" / f"driftmonitor-{MONITOR}.json").read_text())
        assert sorted(report["driftedFeatures"]) == sorted([*SHIFTED, PREDICTION])
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()


def test_service_without_its_reference_stays_up_and_not_ready(tmp_path: Path) -> None:
    config = monitor_config(f"file://{tmp_path}/nowhere/v3", f"http://127.0.0.1:{free_port()}")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "MLCYCLE_DRIFT_HOST": "127.0.0.1",
           "MLCYCLE_REPORT_DIR": str(tmp_path)}
    log = open(tmp_path / "service.log", "wb")  # noqa: SIM115 (closed after the process)
    process = subprocess.Popen([sys.executable, "-m", "mlcycle_runtime.drift", "--config", str(path)],
                               stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    base = f"http://127.0.0.1:{config['port']}"
    try:
        deadline, ready = time.monotonic() + 60, None
        while time.monotonic() < deadline and ready is None:
            assert process.poll() is None, (tmp_path / "service.log").read_text()
            try:
                ready = httpx.get(f"{base}/readyz", timeout=2)
            except httpx.TransportError:
                time.sleep(0.3)
        assert ready is not None and ready.status_code == 503 and "does not exist" in ready.text
        assert httpx.get(f"{base}/livez").status_code == 200
        # A few more ticks, each a failed one logged: it keeps retrying and keeps serving, still not ready.
        retries = (tmp_path / "service.log").read_text().count("no report this time")
        wait_for(lambda: process.poll() is not None
                 or (tmp_path / "service.log").read_text().count("no report this time") >= retries + 2,
                 timeout=30, what="two more failed ticks in the log", every=0.3)
        assert process.poll() is None, (tmp_path / "service.log").read_text()
        assert httpx.get(f"{base}/livez").status_code == 200
        assert httpx.get(f"{base}/readyz").status_code == 503
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
        log.close()
    assert "no report this time" in (tmp_path / "service.log").read_text()


@pytest.mark.parametrize(("change", "words"), [
    (lambda c: c.pop("deployment"), "deployment: Field required"),
    (lambda c: c["spec"].update(window="half an hour"), "spec.window"),
])
def test_bad_config_exits_with_a_one_line_reason(tmp_path: Path, change, words: str) -> None:
    config = monitor_config("file:///nowhere", "http://127.0.0.1:9")
    change(config)
    done = run_monitor(config, tmp_path, "--once", timeout=60)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "invalid config" in lines[0], done.stderr


def test_once_without_reference_or_prometheus_says_why(tmp_path: Path) -> None:
    missing = run_monitor(monitor_config(f"file://{tmp_path}/nowhere", "http://127.0.0.1:9"), tmp_path, "--once")
    assert missing.returncode == 1 and "does not exist" in missing.stderr.strip().splitlines()[-1]
    uri = publish_version(build_reference(np.random.default_rng(0)), tmp_path)
    unreachable = run_monitor(monitor_config(uri, f"http://127.0.0.1:{free_port()}"), tmp_path, "--once")
    assert unreachable.returncode == 1 and "unreachable" in unreachable.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "reports").exists()  # no report rather than a wrong one

"""The drift monitor: every `schedule`, the router's live histograms for the window (from Prometheus) against the
reference histograms of the model in service, one test per feature, one report out and gauges for alerts.

The pure parts (durations, the query, aligning Prometheus vectors to reference bins, scores and verdicts, the
report) take data and return data; `Monitor` adds the I/O: the reference from storage, Prometheus over HTTP,
the Reporter and the gauges.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
from prometheus_client import CollectorRegistry, Gauge

from mlcycle_runtime import metrics, storage
from mlcycle_runtime.config import ConfigError, DriftConfig
from mlcycle_runtime.reference import MISSING, PREDICTION, Histogram, Reference
from mlcycle_runtime.report import Reporter

from . import stats

log = logging.getLogger(__name__)

# The statistics whose score is a p-value: a feature drifted when it falls BELOW the threshold (CRD semantics).
P_VALUE_METHODS = frozenset({"ks", "chiSquared"})
NUMERIC_METHODS = frozenset({"psi", "ks", "wasserstein", "jensenShannon"})
CATEGORICAL_METHODS = frozenset({"chiSquared", "psi", "jensenShannon"})
# Unordered statistics also compare the share of missing values (a surge of nulls is drift); ordered ones
# (ks, wasserstein) cannot place a null on the axis and leave it out.
WITH_MISSING = frozenset({"psi", "jensenShannon", "chiSquared"})

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


# --- pure parts -----------------------------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration as manifests write it ("30s", "5m", "1h30m", "500ms")."""
    parts = _DURATION.findall(text or "")
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration (e.g. 30s, 5m, 1h30m)")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return seconds


def promql_duration(seconds: float) -> str:
    """A range for a PromQL selector: whole seconds, or milliseconds when finer."""
    return f"{round(seconds)}s" if float(seconds).is_integer() else f"{round(seconds * 1000)}ms"


def _label(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def feature_query(namespace: str, deployment: str, version: str | None, window_seconds: float) -> str:
    """The instant query for the live histograms of every feature in the window (all versions when None)."""
    matchers = [f"namespace={_label(namespace)}", f"deployment={_label(deployment)}"]
    if version:
        matchers.append(f"version={_label(version)}")
    selector = f"{metrics.ROUTER_FEATURE_BINS}{{{','.join(matchers)}}}[{promql_duration(window_seconds)}]"
    return f"sum by (feature, bin) (increase({selector}))"


def live_histograms(vector: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """An instant vector (the `result` of /api/v1/query) as {feature: {bin label: count}}."""
    out: dict[str, dict[str, float]] = {}
    for sample in vector:
        labels = sample.get("metric") or {}
        feature, label = labels.get("feature"), labels.get("bin")
        if feature is None or label is None:
            continue
        value = float(sample["value"][1])
        if math.isfinite(value) and value > 0:
            out.setdefault(feature, {})[label] = out.get(feature, {}).get(label, 0.0) + value
    return out


@dataclass
class Aligned:
    """A feature's reference and live counts on the same bins; the last bin is `missing` when with_missing."""

    reference: np.ndarray
    current: np.ndarray
    unknown: float  # live counts under bin labels the reference does not have (another reference's bins)


def align(histogram: Histogram, live: Mapping[str, float], with_missing: bool) -> Aligned:
    """Reference and live counts of one feature, bin by bin (labels "0".."B-1", and "missing")."""
    current = np.zeros(histogram.bins + (1 if with_missing else 0))
    unknown = 0.0
    for label, count in live.items():
        if label == MISSING:
            if with_missing:
                current[-1] += count
        elif label.isdigit() and int(label) < histogram.bins:
            current[int(label)] += count
        else:
            unknown += count
    reference = np.asarray(histogram.counts + ([histogram.missing] if with_missing else []), dtype=np.float64)
    return Aligned(reference, current, unknown)


def method_for(histogram: Histogram, config: DriftConfig) -> tuple[str, float]:
    test = config.spec.tests.numeric if histogram.kind == "numeric" else config.spec.tests.categorical
    return test.method, test.threshold


def score(method: str, aligned: Aligned, histogram: Histogram) -> float:
    """The statistic of one feature (a p-value for ks and chiSquared); NaN when a side has no values."""
    ref, cur = aligned.reference, aligned.current
    if method == "psi":
        value = stats.psi(ref, cur)
    elif method == "jensenShannon":
        value = stats.jensen_shannon(ref, cur)
    elif method == "chiSquared":
        value = stats.chi_squared(ref, cur)[1]
    elif method == "ks":
        value = stats.ks_binned(ref, cur)[1]
    elif method == "wasserstein":
        if histogram.kind != "numeric" or histogram.bins < 3:
            return math.nan  # no width to measure with fewer than two inner edges
        value = stats.wasserstein_binned(ref, cur, np.asarray(histogram.edges, dtype=np.float64))
    else:
        raise ValueError(f"unknown drift test {method!r}")
    return float(value)


def drifted(method: str, value: float, threshold: float) -> bool:
    """The verdict: a score above the threshold, or a p-value below it; never for a score that is not a number."""
    if not math.isfinite(value):
        return False
    return value < threshold if method in P_VALUE_METHODS else value > threshold


def check(config: DriftConfig) -> tuple[float, float]:
    """(window, schedule) in seconds; a ConfigError naming the field for what the service cannot run with."""
    spec = config.spec
    seconds = []
    for field in ("window", "schedule"):
        try:
            seconds.append(parse_duration(getattr(spec, field)))
        except ValueError as err:
            raise ConfigError(f"spec.{field}: {err}") from None
    if spec.tests.numeric.method not in NUMERIC_METHODS:
        raise ConfigError(f"spec.tests.numeric.method: {spec.tests.numeric.method} is not a numeric test "
                          f"({', '.join(sorted(NUMERIC_METHODS))})")
    if spec.tests.categorical.method not in CATEGORICAL_METHODS:
        raise ConfigError(f"spec.tests.categorical.method: {spec.tests.categorical.method} is not a categorical "
                          f"test ({', '.join(sorted(CATEGORICAL_METHODS))})")
    if not config.prometheus_url:
        raise ConfigError("prometheusUrl: required (the monitor reads the router's histograms from Prometheus)")
    if not (config.reference_uri or spec.reference.uri):
        raise ConfigError("referenceUri: required (or spec.reference.uri): the model version whose reference "
                          "histograms the router bins with")
    return seconds[0], seconds[1]


def monitored(config: DriftConfig, reference: Reference) -> tuple[list[str], list[str]]:
    """(features to test, requested features the reference does not have), in a stable order."""
    wanted = list(config.spec.features) or list(reference.features)
    names = [f for f in wanted if f in reference.features]
    unknown = [f for f in wanted if f not in reference.features and f != PREDICTION]
    if (config.spec.prediction or PREDICTION in config.spec.features) and reference.prediction is not None:
        names.append(PREDICTION)
    return names, unknown


def samples_in(live: Mapping[str, Mapping[str, float]]) -> int:
    """Requests in the window: every request has a prediction; without one, the busiest feature's count."""
    if PREDICTION in live:
        return round(sum(live[PREDICTION].values()))
    return round(max((sum(bins.values()) for bins in live.values()), default=0.0))


def now_rfc3339(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_report(config: DriftConfig, reference: Reference, live: Mapping[str, Mapping[str, float]],
                 now: datetime | None = None) -> dict[str, Any]:
    """The report of docs/runtime-contract.md from reference and live histograms; a feature that cannot be
    scored (no live values) is listed under `skipped` with the reason instead of carrying a non-number."""
    samples = samples_in(live)
    report: dict[str, Any] = {"time": now_rfc3339(now), "window": config.spec.window, "samples": samples,
                              "version": config.version, "drifted": False, "driftedFeatures": [], "features": []}
    names, unknown = monitored(config, reference)
    if unknown:
        report["unknownFeatures"] = unknown
    if samples < config.spec.min_samples:
        report["reason"] = (f"{samples} requests in the last {config.spec.window}, fewer than minSamples "
                            f"{config.spec.min_samples}: no verdict")
        return report
    skipped = []
    for name in names:
        histogram = reference.histogram(name)
        method, threshold = method_for(histogram, config)
        aligned = align(histogram, live.get(name, {}), with_missing=method in WITH_MISSING)
        if aligned.unknown:
            log.warning("%s: %.0f live values in bins the reference does not have (was it binned with another "
                        "model version's edges?)", name, aligned.unknown)
        value = score(method, aligned, histogram)
        if not math.isfinite(value):
            skipped.append({"name": name, "reason": "no live values in the reference's bins"})
            continue
        verdict = drifted(method, value, threshold)
        report["features"].append({"name": name, "method": method, "score": value, "threshold": threshold,
                                   "drifted": verdict})
        if verdict:
            report["driftedFeatures"].append(name)
    if skipped:
        report["skipped"] = skipped
    report["drifted"] = bool(report["driftedFeatures"])
    return report


# --- I/O ------------------------------------------------------------------------------------------------------


class PrometheusError(Exception):
    """Prometheus could not answer the query; the message says why in one line."""


class ReferenceUnavailable(Exception):
    """The reference histograms cannot be read; the message says which and why."""


class MonitorError(Exception):
    """A tick that produced no report (reference or Prometheus unavailable); the message is one line."""


def query_prometheus(url: str, promql: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The result vector of an instant query (HTTP API /api/v1/query)."""
    try:
        resp = httpx.get(f"{url.rstrip('/')}/api/v1/query", params={"query": promql}, timeout=timeout)
    except httpx.HTTPError as err:
        raise PrometheusError(f"Prometheus at {url} is unreachable: {type(err).__name__}: {err}") from None
    try:
        body = resp.json()
    except ValueError:
        raise PrometheusError(f"Prometheus at {url} answered {resp.status_code} without JSON") from None
    if resp.status_code != 200 or body.get("status") != "success":
        raise PrometheusError(f"Prometheus at {url} refused the query ({resp.status_code}): "
                              f"{body.get('errorType', '')} {body.get('error', '')}".strip())
    data = body.get("data") or {}
    if data.get("resultType") != "vector":
        raise PrometheusError(f"Prometheus at {url} answered a {data.get('resultType')}, not a vector")
    return data.get("result") or []


class Monitor:
    """One DriftMonitor's workload: loads the reference (retrying), computes reports, exports gauges."""

    def __init__(self, config: DriftConfig, reporter: Reporter | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.window_seconds, self.schedule_seconds = check(config)
        self.reference_uri = config.reference_uri or config.spec.reference.uri or ""
        self.reporter = reporter or Reporter("DriftMonitor", config.name, config.namespace,
                                             status_field=config.report.status_field)
        self.registry = registry or CollectorRegistry()
        self.score_gauge = Gauge(metrics.DRIFT_SCORE, "Drift score per feature (a p-value for ks and chiSquared).",
                                 ["namespace", "deployment", "version", "feature"], registry=self.registry)
        self.detected_gauge = Gauge(metrics.DRIFT_DETECTED, "1 when the feature drifted in the last report.",
                                    ["namespace", "monitor", "feature"], registry=self.registry)
        self.samples_gauge = Gauge(metrics.DRIFT_SAMPLES, "Requests in the window of the last report.",
                                   ["namespace", "monitor"], registry=self.registry)
        self.reference: Reference | None = None
        self.last_error: str | None = None
        self._series: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.reference is not None

    def load_reference(self) -> Reference:
        if self.reference is None:
            try:
                data = storage.read_json(self.reference_uri, storage.REFERENCE)
                self.reference = Reference.from_json(data)
            except storage.StorageError as err:
                raise ReferenceUnavailable(str(err)) from None
            except (KeyError, TypeError, ValueError) as err:
                raise ReferenceUnavailable(f"{self.reference_uri}/{storage.REFERENCE} is not a reference: "
                                     f"{type(err).__name__}: {err}") from None
            log.info("reference loaded from %s: %d features%s", self.reference_uri, len(self.reference.features),
                     " and predictions" if self.reference.prediction else "")
        return self.reference

    def tick(self, now: datetime | None = None) -> dict[str, Any]:
        """One report: reference, live histograms, statistics, then status and gauges. Raises MonitorError."""
        with self._lock:
            try:
                reference = self.load_reference()
                promql = feature_query(self.config.namespace, self.config.deployment, self.config.version,
                                       self.window_seconds)
                live = live_histograms(query_prometheus(self.config.prometheus_url or "", promql))
            except (ReferenceUnavailable, PrometheusError) as err:
                self.last_error = str(err)
                raise MonitorError(str(err)) from None
            report = build_report(self.config, reference, live, now)
            self._export(report)
            self.reporter.send(report)
            self.last_error = None
            return report

    def _export(self, report: dict[str, Any]) -> None:
        cfg = self.config
        self.samples_gauge.labels(cfg.namespace, cfg.name).set(report["samples"])
        series = set()
        for feature in report["features"]:
            score_labels = ("score", cfg.namespace, cfg.deployment, cfg.version or "", feature["name"])
            detected_labels = ("detected", cfg.namespace, cfg.name, feature["name"])
            self.score_gauge.labels(*score_labels[1:]).set(feature["score"])
            self.detected_gauge.labels(*detected_labels[1:]).set(1 if feature["drifted"] else 0)
            series.update((score_labels, detected_labels))
        # A feature no longer scored (too few samples, another version) must not keep alerting on old values.
        for stale in self._series - series:
            gauge = self.score_gauge if stale[0] == "score" else self.detected_gauge
            gauge.remove(*stale[1:])
        self._series = series

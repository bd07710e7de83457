"""The router's Prometheus metrics, with label children cached so the hot path does one dict lookup per update."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from mlcycle_runtime import metrics
from mlcycle_runtime.reference import MISSING, PREDICTION, Reference, bin_value
from mlcycle_runtime.reference import Histogram as ReferenceHistogram


class RouterMetrics:
    """Per-version requests, latency, shadow comparisons and live feature histograms of one ModelDeployment."""

    def __init__(self, namespace: str, deployment: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._base = (namespace, deployment)
        labels = ["namespace", "deployment", "version"]
        self._requests = Counter(metrics.ROUTER_REQUESTS, "Requests routed, by the version that answered and status "
                                 "code (mirrored requests included).", [*labels, "code"], registry=self.registry)
        self._duration = Histogram(metrics.ROUTER_DURATION, "Time from receiving a request to the version's answer.",
                                   labels, buckets=metrics.LATENCY_BUCKETS, registry=self.registry)
        self._shadow = Counter(metrics.ROUTER_SHADOW, "Mirrored requests whose answer was compared with the one the "
                               "client got, by shadow version and result.", [*labels, "result"],
                               registry=self.registry)
        self._bins = Counter(metrics.ROUTER_FEATURE_BINS, "Live values per feature and reference bin ('prediction' "
                             "holds the model's scores).", [*labels, "feature", "bin"], registry=self.registry)
        self._log_rows = Counter(metrics.ROUTER_PREDICTION_LOG, "Rows of sampled answers for the prediction log, by "
                                 "outcome: written, or dropped (buffer_full, write_failed, disabled).",
                                 ["namespace", "deployment", "outcome"], registry=self.registry)
        self._request_children: dict[tuple[str, str], Any] = {}
        self._duration_children: dict[str, Any] = {}
        self._shadow_children: dict[tuple[str, str], Any] = {}
        self._bin_children: dict[tuple[str, str, str], Any] = {}
        self._features: list[tuple[str, Any]] = []
        self._prediction: Any = None
        self._versions: set[str] = set()  # versions whose bins exist (at 0 until hit) under this reference

    def request(self, version: str, code: int | str, seconds: float | None) -> None:
        key = (version, str(code))
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self._requests.labels(*self._base, *key)
        child.inc()
        if seconds is not None:
            hist = self._duration_children.get(version)
            if hist is None:
                hist = self._duration_children[version] = self._duration.labels(*self._base, version)
            hist.observe(seconds)

    def prediction_log_rows(self, outcome: str, rows: int) -> None:
        self._log_rows.labels(*self._base, outcome).inc(rows)

    def shadow(self, version: str, result: str) -> None:
        key = (version, result)
        child = self._shadow_children.get(key)
        if child is None:
            child = self._shadow_children[key] = self._shadow.labels(*self._base, *key)
        child.inc()

    def set_reference(self, reference: Reference | None) -> None:
        """Bin against these histograms from now on (None: bin nothing)."""
        self._features = list(reference.features.items()) if reference else []
        self._prediction = reference.prediction if reference else None
        # Bin labels of the old reference may mean other ranges now; forget the cached children, not the series.
        self._bin_children = {}
        versions, self._versions = self._versions, set()
        self.announce(versions)

    def announce(self, versions: Iterable[str]) -> None:
        """Create every bin series of these versions at 0, before their first request. Prometheus' increase()
        cannot see what a series counted before its first scrape: series born on their first hit lost their
        first counts, unevenly across bins, and drift showed on traffic drawn from the training data itself."""
        histograms = [*self._features, *([(PREDICTION, self._prediction)] if self._prediction is not None else [])]
        for version in versions:
            if version in self._versions:
                continue
            self._versions.add(version)
            for feature, histogram in histograms:
                for label in _bin_labels(histogram):
                    key = (version, feature, label)
                    if key not in self._bin_children:
                        self._bin_children[key] = self._bins.labels(*self._base, *key)

    @property
    def binning(self) -> bool:
        return bool(self._features) or self._prediction is not None

    def _bin(self, version: str, feature: str, label: str) -> None:
        key = (version, feature, label)
        child = self._bin_children.get(key)
        if child is None:
            child = self._bin_children[key] = self._bins.labels(*self._base, *key)
        child.inc()

    def observe_predict(self, version: str, records: Iterable[Any], predictions: Iterable[Any]) -> None:
        """Bin each record's features and each prediction against the reference histograms."""
        features = self._features
        if version not in self._versions and self.binning:
            self.announce([version])
        for record in records:
            if isinstance(record, dict):
                for name, histogram in features:
                    self._bin(version, name, bin_value(histogram, record.get(name)))
        if self._prediction is not None:
            for score in predictions:
                self._bin(version, PREDICTION, bin_value(self._prediction, score))


def _bin_labels(histogram: ReferenceHistogram) -> list[str]:
    """Every label bin_value can give for this histogram."""
    outside = len(histogram.edges or []) if histogram.kind == "numeric" else len(histogram.categories or [])
    return [*(str(i) for i in range(max(histogram.bins, outside + 1))), MISSING]

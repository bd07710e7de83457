"""An exporter of the router's per-version metrics (the names of the runtime contract), fed by synthetic
traffic whose error rate and latency the test sets. Prometheus scrapes it like it scrapes the real router;
the operator's canary analysis cannot tell the difference, which is the point."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from .cluster import free_port


@dataclass
class Series:
    """Traffic of one version of one ModelDeployment."""

    error_rate: float = 0.0
    latency_seconds: float = 0.01
    requests_per_second: float = 50.0
    agreement: float | None = None  # set for a shadow version: share of mirrored answers that agree


class RouterMetrics:
    """Serves /metrics on a free loopback port and generates requests in a background thread."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mlcycle_router_requests", "Requests routed, by version and status code.",
                                ["namespace", "deployment", "version", "code"], registry=self.registry)
        self.latency = Histogram("mlcycle_router_request_duration_seconds", "Upstream latency by version.",
                                 ["namespace", "deployment", "version"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.shadow = Counter("mlcycle_router_shadow_comparisons", "Mirrored requests compared with the stable "
                              "answer, by shadow version and result.",
                              ["namespace", "deployment", "version", "result"], registry=self.registry)
        self.series: dict[tuple[str, str, str], Series] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._random = random.Random(7)
        self.port = free_port()
        self._server, self._server_thread = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        self._thread = threading.Thread(target=self._run, name="router-metrics", daemon=True)
        self._thread.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, namespace: str, deployment: str, version: str, **values: float) -> None:
        with self._lock:
            series = self.series.setdefault((namespace, deployment, version), Series())
            for key, value in values.items():
                setattr(series, key, value)

    def _run(self) -> None:
        tick = 0.1
        while not self._stop.wait(tick):
            with self._lock:
                items = list(self.series.items())
            for (namespace, deployment, version), series in items:
                count = max(1, round(series.requests_per_second * tick))
                errors = sum(self._random.random() < series.error_rate for _ in range(count))
                labels = (namespace, deployment, version)
                self.requests.labels(*labels, "200").inc(count - errors)
                if errors:
                    self.requests.labels(*labels, "503").inc(errors)
                for _ in range(count):
                    self.latency.labels(*labels).observe(series.latency_seconds)
                if series.agreement is not None:
                    agree = sum(self._random.random() < series.agreement for _ in range(count))
                    self.shadow.labels(*labels, "agree").inc(agree)
                    self.shadow.labels(*labels, "disagree").inc(count - agree)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.shutdown()
        self._server.server_close()

"""The operator's configuration: environment variables, one prefix (MLCYCLE_), read once at start."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

PREFIX = "MLCYCLE_"
# Handlers are synchronous (the kubernetes client) and run in this many threads at once; the client keeps as
# many connections, so that no thread opens a TLS connection of its own for each request.
HANDLER_THREADS = 16


@dataclass(frozen=True)
class Config:
    """Settings that are not part of any resource's spec."""

    prometheus_url: str | None = None  # Prometheus HTTP API for canary analysis; analysis is inconclusive without it
    watch_namespaces: tuple[str, ...] = ()  # empty: all namespaces
    runtime_image: str = "ghcr.io/mlcycle/runtime:0.1.0"  # used when neither the resource nor its project sets one
    metrics_port: int = 8080  # the operator's own Prometheus metrics
    health_port: int = 8081  # Kopf's liveness endpoint
    log_level: str = "INFO"
    prometheus_timeout: float = 5.0
    peering: str = field(default="mlcycle")  # Kopf peering name, for running more than one replica
    # Connections Kopf uses for requests at once, besides one per watch; 0: no limit (Kopf's default).
    api_connections: int = 32
    # Where KubeRay's operator runs: only it (and a RayJob's own submitter pod) may reach a Ray head's dashboard,
    # which serves job submission. Empty: KubeRay's pods (app.kubernetes.io/component=kuberay-operator) in any
    # namespace.
    kuberay_namespace: str = ""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Config:
        env = dict(os.environ if env is None else env)

        def get(name: str, default: str | None = None) -> str | None:
            value = env.get(PREFIX + name, "").strip()
            return value or default

        namespaces = tuple(n.strip() for n in (get("WATCH_NAMESPACES", "") or "").split(",") if n.strip())
        try:
            return cls(
                prometheus_url=(get("PROMETHEUS_URL") or "").rstrip("/") or None,
                watch_namespaces=namespaces,
                runtime_image=get("RUNTIME_IMAGE", cls.runtime_image),
                metrics_port=int(get("METRICS_PORT", str(cls.metrics_port))),
                health_port=int(get("HEALTH_PORT", str(cls.health_port))),
                log_level=(get("LOG_LEVEL", cls.log_level) or "INFO").upper(),
                prometheus_timeout=float(get("PROMETHEUS_TIMEOUT", str(cls.prometheus_timeout))),
                peering=get("PEERING", cls.peering),
                api_connections=int(get("API_CONNECTIONS", str(cls.api_connections))),
                kuberay_namespace=get("KUBERAY_NAMESPACE", "") or "",
            )
        except ValueError as err:
            raise SystemExit(f"invalid {PREFIX}* setting: {err}") from err


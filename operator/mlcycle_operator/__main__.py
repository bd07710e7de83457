"""python -m mlcycle_operator: run the operator (the one place that starts Kopf)."""

from __future__ import annotations

import logging

import kopf
import prometheus_client

from . import handlers  # noqa: F401  (registers every handler)
from .config import Config


def main() -> None:
    config = Config.from_env()
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config.metrics_port:
        prometheus_client.start_http_server(config.metrics_port)
    kopf.run(
        clusterwide=not config.watch_namespaces,
        namespaces=config.watch_namespaces,
        liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz",
    )


if __name__ == "__main__":
    main()

"""The operator's own Prometheus metrics (names mlcycle_operator_*, low-cardinality labels only)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Histogram

RECONCILES = Counter("mlcycle_operator_reconciles_total", "Reconciliations, by kind and result.", ["kind", "result"])
RECONCILE_SECONDS = Histogram(
    "mlcycle_operator_reconcile_duration_seconds", "Time spent in one reconciliation.", ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CHILD_WRITES = Counter("mlcycle_operator_child_writes_total", "Child objects created or updated.", ["kind", "action"])
ROLLOUT_DECISIONS = Counter("mlcycle_operator_rollout_decisions_total", "Rollout decisions taken, by action.",
                            ["action"])
ANALYSIS_QUERIES = Counter("mlcycle_operator_analysis_queries_total", "Prometheus queries, by outcome.", ["outcome"])
RETRAINS = Counter("mlcycle_operator_retrains_total", "Retraining decisions on drift, by outcome.", ["outcome"])


@contextmanager
def reconciling(kind: str) -> Iterator[None]:
    """Count and time one reconciliation; an exception counts as an error and propagates."""
    started = time.perf_counter()
    try:
        yield
    except Exception:
        RECONCILES.labels(kind, "error").inc()
        raise
    else:
        RECONCILES.labels(kind, "ok").inc()
    finally:
        RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)

"""Canary analysis measurements from the Prometheus HTTP API.

The router exports per-version request, error and latency metrics; the drift monitor exports drift
scores. Each analysis metric becomes one instant query. Prometheus unreachable means "could not measure"
(None), which the rollout state machine treats as inconclusive — never as a failure.
"""

from __future__ import annotations

import json
import logging
import math
import urllib.error
import urllib.parse
import urllib.request

from .api.modeldeployment import AnalysisMetric, MetricMeasurement
from .metrics import ANALYSIS_QUERIES
from .rollout import ShadowStats

log = logging.getLogger(__name__)

# Router metrics (runtime contract; see docs/runtime-contract.md).
REQUESTS = "mlcycle_router_requests_total"
LATENCY = "mlcycle_router_request_duration_seconds_bucket"
DRIFT = "mlcycle_drift_score"
SHADOW = "mlcycle_router_shadow_comparisons_total"  # labels: result="agree"|"disagree", version = the shadow

DEFAULT_METRICS = [
    AnalysisMetric(name="error-rate", type="errorRate", threshold=0.05),
    AnalysisMetric(name="p99-latency-seconds", type="latencyP99", threshold=0.5),
]


def query_for(metric: AnalysisMetric, namespace: str, deployment: str, version: str, window: str) -> str:
    """The PromQL of one analysis metric for one version over a window such as 1m."""
    sel = f'namespace="{namespace}",deployment="{deployment}",version="{version}"'
    if metric.type == "errorRate":
        # No 5xx series at all means no errors (0), while no requests at all stays "not measured".
        return (f'(sum(rate({REQUESTS}{{{sel},code=~"5.."}}[{window}])) or vector(0))'
                f" / sum(rate({REQUESTS}{{{sel}}}[{window}]))")
    if metric.type == "latencyP99":
        return f"histogram_quantile(0.99, sum by (le) (rate({LATENCY}{{{sel}}}[{window}])))"
    if metric.type == "predictionDrift":
        return f'max({DRIFT}{{{sel},feature="prediction"}})'
    assert metric.query is not None
    return (metric.query.replace("{{version}}", version).replace("{{namespace}}", namespace)
            .replace("{{deployment}}", deployment))


def instant_query(prometheus_url: str, promql: str, timeout: float) -> float | None:
    """The single value of an instant query; None when the result is empty or not a number (no traffic).
    Raises OSError when Prometheus cannot be reached or answers with an error."""
    url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        payload = json.loads(resp.read())
    if payload.get("status") != "success":
        raise OSError(f"Prometheus refused the query: {payload.get('error')}")
    result = payload["data"]["result"]
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if math.isnan(value) or math.isinf(value) else value


def measure(prometheus_url: str | None, metrics: list[AnalysisMetric], namespace: str, deployment: str,
            version: str, window: str, timeout: float = 5.0) -> list[MetricMeasurement] | None:
    """Every metric's value and verdict for the candidate; None when Prometheus is unreachable."""
    if not prometheus_url:
        ANALYSIS_QUERIES.labels("no-prometheus").inc()
        return None
    measurements = []
    for metric in metrics or DEFAULT_METRICS:
        try:
            value = instant_query(prometheus_url, query_for(metric, namespace, deployment, version, window), timeout)
        except (OSError, ValueError, KeyError, urllib.error.URLError) as err:
            log.warning("analysis query for %s failed: %s", metric.name, err)
            ANALYSIS_QUERIES.labels("unreachable").inc()
            return None
        ANALYSIS_QUERIES.labels("ok" if value is not None else "empty").inc()
        passed = None if value is None else (value < metric.threshold if metric.comparison == "lessThan"
                                             else value > metric.threshold)
        measurements.append(MetricMeasurement(name=metric.name, value=value, threshold=metric.threshold,
                                              passed=passed))
    return measurements


def shadow_stats(prometheus_url: str | None, namespace: str, deployment: str, stable: str, candidate: str,
                 window: str, timeout: float = 5.0) -> ShadowStats | None:
    """Mirrored requests compared by the router over the window: how many, the share that agreed, and the
    candidate's p99 latency over the stable version's. None when Prometheus cannot be asked."""
    if not prometheus_url:
        return None

    def sel(version: str) -> str:
        return f'namespace="{namespace}",deployment="{deployment}",version="{version}"'

    def p99(version: str) -> str:
        return f"histogram_quantile(0.99, sum by (le) (rate({LATENCY}{{{sel(version)}}}[{window}])))"

    try:
        total = instant_query(prometheus_url, f"sum(increase({SHADOW}{{{sel(candidate)}}}[{window}]))", timeout)
        agreed = instant_query(
            prometheus_url, f'sum(increase({SHADOW}{{{sel(candidate)},result="agree"}}[{window}])) or vector(0)',
            timeout)
        ratio = instant_query(prometheus_url, f"{p99(candidate)} / {p99(stable)}", timeout)
    except (OSError, ValueError, KeyError) as err:
        log.warning("shadow comparison query failed: %s", err)
        ANALYSIS_QUERIES.labels("unreachable").inc()
        return None
    ANALYSIS_QUERIES.labels("ok").inc()
    if not total:
        return ShadowStats(samples=0, agreement=float("nan"), latency_ratio=float("nan"))
    return ShadowStats(samples=int(total), agreement=(agreed or 0.0) / total,
                       latency_ratio=ratio if ratio is not None else float("nan"))

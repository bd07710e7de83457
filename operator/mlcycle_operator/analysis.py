"""Canary analysis measurements from the Prometheus HTTP API.

The router exports per-version request, error and latency metrics, and bins every version's predictions
against the stable version's reference edges. Each analysis metric becomes an instant query (prediction drift:
one per version, compared here). Prometheus unreachable means "could not measure" (None), which the rollout
state machine treats as inconclusive — never as a failure.
"""

from __future__ import annotations

import json
import logging
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping

from .api.modeldeployment import AnalysisMetric, MetricMeasurement
from .metrics import ANALYSIS_QUERIES
from .rollout import ShadowStats

log = logging.getLogger(__name__)

# Router metrics (runtime contract; see docs/runtime-contract.md).
REQUESTS = "mlcycle_router_requests_total"
LATENCY = "mlcycle_router_request_duration_seconds_bucket"
BINS = "mlcycle_router_feature_values_total"  # labels: feature ("prediction" for the scores), bin
SHADOW = "mlcycle_router_shadow_comparisons_total"  # labels: result="agree"|"disagree", version = the shadow

# Predictions each version needs in the window before their histograms are compared: below it, PSI is noise
# (between two samples of n it is biased upward by about (bins - 1) * 2 / n even when nothing changed).
MIN_DRIFT_SAMPLES = 100
PSI_EPSILON = 1e-4  # floor of a bin's share, as the drift monitor's PSI (an empty bin must not make it infinite)

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
        # The version's prediction histogram; the value is its PSI against the stable version's (measure()).
        return prediction_histogram_query(namespace, deployment, version, window)
    assert metric.query is not None
    return (metric.query.replace("{{version}}", version).replace("{{namespace}}", namespace)
            .replace("{{deployment}}", deployment))


def prediction_histogram_query(namespace: str, deployment: str, version: str, window: str) -> str:
    """The router's counts of one version's predictions per reference bin over the window."""
    sel = f'namespace="{namespace}",deployment="{deployment}",version="{version}",feature="prediction"'
    return f"sum by (bin) (increase({BINS}{{{sel}}}[{window}]))"


def _query(prometheus_url: str, promql: str, timeout: float) -> list[dict]:
    """An instant query's result series. Raises OSError when Prometheus cannot be reached or answers with an
    error."""
    url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        payload = json.loads(resp.read())
    if payload.get("status") != "success":
        raise OSError(f"Prometheus refused the query: {payload.get('error')}")
    return payload["data"]["result"]


def instant_query(prometheus_url: str, promql: str, timeout: float) -> float | None:
    """The single value of an instant query; None when the result is empty or not a number (no traffic).
    Raises OSError when Prometheus cannot be reached or answers with an error."""
    result = _query(prometheus_url, promql, timeout)
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if math.isnan(value) or math.isinf(value) else value


def vector_query(prometheus_url: str, promql: str, label: str, timeout: float) -> dict[str, float]:
    """An instant query's series as {value of `label`: value}, finite values only.
    Raises OSError when Prometheus cannot be reached or answers with an error."""
    values = {}
    for sample in _query(prometheus_url, promql, timeout):
        value = float(sample["value"][1])
        if math.isfinite(value):
            values[sample["metric"].get(label, "")] = value
    return values


def prediction_psi(stable: Mapping[str, float], candidate: Mapping[str, float],
                   min_samples: float = MIN_DRIFT_SAMPLES) -> float | None:
    """Population stability index of the candidate's prediction histogram against the stable version's, over
    the union of their bins; None when either holds fewer than `min_samples` predictions."""
    stable_total, candidate_total = sum(stable.values()), sum(candidate.values())
    if stable_total < min_samples or candidate_total < min_samples:
        return None
    psi = 0.0
    for label in set(stable) | set(candidate):
        r = max(stable.get(label, 0.0) / stable_total, PSI_EPSILON)
        c = max(candidate.get(label, 0.0) / candidate_total, PSI_EPSILON)
        psi += (c - r) * math.log(c / r)
    return psi


def prediction_drift(prometheus_url: str, namespace: str, deployment: str, stable: str | None, candidate: str,
                     window: str, timeout: float) -> float | None:
    """PSI of the candidate's predictions against the stable version's over the window; None when there is no
    stable version to compare with or too few predictions."""
    if not stable or stable == candidate:
        log.warning("predictionDrift of %s not measured: no stable version to compare it with", candidate)
        return None
    histograms = [vector_query(prometheus_url, prediction_histogram_query(namespace, deployment, version, window),
                               "bin", timeout) for version in (stable, candidate)]
    return prediction_psi(*histograms)


def measure(prometheus_url: str | None, metrics: list[AnalysisMetric], namespace: str, deployment: str,
            version: str, window: str, timeout: float = 5.0, stable: str | None = None
            ) -> list[MetricMeasurement] | None:
    """Every metric's value and verdict for the candidate `version` (predictionDrift compares it with `stable`);
    None when Prometheus is unreachable."""
    if not prometheus_url:
        ANALYSIS_QUERIES.labels("no-prometheus").inc()
        return None
    measurements = []
    for metric in metrics or DEFAULT_METRICS:
        try:
            if metric.type == "predictionDrift":
                value = prediction_drift(prometheus_url, namespace, deployment, stable, version, window, timeout)
            else:
                value = instant_query(prometheus_url, query_for(metric, namespace, deployment, version, window),
                                      timeout)
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

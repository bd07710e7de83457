"""The pure parts of canary analysis: the PromQL of each metric type, and prediction drift of a candidate against
the stable version from the router's per-version prediction histograms, checked against the drift monitor's PSI."""

from __future__ import annotations

import numpy as np
import pytest

from mlcycle_operator.analysis import (
    MIN_DRIFT_SAMPLES,
    measure,
    prediction_drift,
    prediction_histogram_query,
    prediction_psi,
    query_for,
)
from mlcycle_operator.api.modeldeployment import AnalysisMetric
from mlcycle_runtime.drift.stats import psi as monitor_psi

DRIFT = AnalysisMetric(name="prediction-drift", type="predictionDrift", threshold=0.2)


def test_prediction_drift_reads_the_routers_histogram_of_the_version():
    promql = query_for(DRIFT, "team-a", "churn", "v2", "1m")
    assert promql == prediction_histogram_query("team-a", "churn", "v2", "1m")
    assert promql == ('sum by (bin) (increase(mlcycle_router_feature_values_total{namespace="team-a",'
                      'deployment="churn",version="v2",feature="prediction"}[1m]))')
    # Not the drift monitor's gauge: it scores only the stable version, so a candidate was never measured.
    assert "mlcycle_drift_score" not in promql


@pytest.mark.parametrize("shift", [0.0, 0.3, 1.5])
def test_prediction_psi_matches_the_drift_monitors(shift):
    rng = np.random.default_rng(3)
    edges = np.quantile(rng.normal(size=5000), np.linspace(0, 1, 11)[1:-1])
    stable = np.bincount(np.searchsorted(edges, rng.normal(size=4000), side="right"), minlength=10)
    candidate = np.bincount(np.searchsorted(edges, rng.normal(shift, size=3000), side="right"), minlength=10)
    as_labels = lambda counts: {str(i): float(c) for i, c in enumerate(counts) if c}  # noqa: E731 (bins never seen are absent)
    got = prediction_psi(as_labels(stable), as_labels(candidate))
    assert got == pytest.approx(float(monitor_psi(stable.astype(float), candidate.astype(float))), rel=1e-9)
    assert (got < 0.05) if shift == 0 else (got > 0.1)


def test_prediction_psi_compares_bins_either_side_has():
    # "missing" (a prediction that was not a number) and a bin only the candidate reached count too.
    stable = {"0": 500.0, "1": 500.0}
    candidate = {"0": 250.0, "1": 250.0, "2": 400.0, "missing": 100.0}
    expected = sum((c - r) * np.log(c / r) for r, c in [(0.5, 0.25), (0.5, 0.25), (1e-4, 0.4), (1e-4, 0.1)])
    assert prediction_psi(stable, candidate) == pytest.approx(expected)


@pytest.mark.parametrize(("stable", "candidate"), [
    ({}, {"0": 500.0}),
    ({"0": 500.0}, {}),
    ({"0": 500.0}, {"0": MIN_DRIFT_SAMPLES - 1}),
], ids=["no stable predictions", "no candidate predictions", "too few candidate predictions"])
def test_prediction_psi_is_not_measured_on_too_few_predictions(stable, candidate):
    assert prediction_psi(stable, candidate) is None


def test_prediction_drift_without_a_stable_version_is_not_measured():
    # Asked nothing of Prometheus (the URL is not even valid): there is nothing to compare the candidate with.
    assert prediction_drift("http://unused.invalid", "team-a", "churn", None, "v2", "1m", 1.0) is None
    assert prediction_drift("http://unused.invalid", "team-a", "churn", "v2", "v2", "1m", 1.0) is None


def test_measure_without_prometheus_is_unmeasured():
    assert measure(None, [DRIFT], "team-a", "churn", "v2", "1m", stable="v1") is None

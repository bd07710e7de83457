"""The drift monitor's pure parts: durations, the query, aligning Prometheus vectors to bins, verdicts, reports."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from mlcycle_runtime.config import ConfigError, DriftConfig, parse
from mlcycle_runtime.drift import monitor, stats
from mlcycle_runtime.reference import Histogram, Reference


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("1h30m", 5400),
                                               ("500ms", 0.5), ("1.5h", 5400), ("2m30s", 150)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert monitor.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "5d", "m5", "5m ", "-5m", "0s", "5 m"])
def test_parse_duration_refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        monitor.parse_duration(text)


def test_promql_duration() -> None:
    assert monitor.promql_duration(5400.0) == "5400s"
    assert monitor.promql_duration(0.5) == "500ms"


def test_feature_query_names_the_deployment_and_version() -> None:
    q = monitor.feature_query("team-a", "churn", "v3", 1800)
    assert q == ('sum by (feature, bin) (increase(mlcycle_router_feature_values_total{namespace="team-a",'
                 'deployment="churn",version="v3"}[1800s]))')
    assert 'version=' not in monitor.feature_query("team-a", "churn", None, 60)
    assert r'\"' in monitor.feature_query('we"ird', "churn", None, 60)  # label values are escaped


def test_live_histograms_from_a_prometheus_vector() -> None:
    vector = [
        {"metric": {"feature": "age", "bin": "0"}, "value": [1.0, "12.5"]},
        {"metric": {"feature": "age", "bin": "missing"}, "value": [1.0, "3"]},
        {"metric": {"feature": "plan", "bin": "1"}, "value": [1.0, "0"]},  # no increase: no entry
        {"metric": {"feature": "plan", "bin": "2"}, "value": [1.0, "NaN"]},
        {"metric": {"bin": "2"}, "value": [1.0, "7"]},  # not a feature series
    ]
    assert monitor.live_histograms(vector) == {"age": {"0": 12.5, "missing": 3.0}}


def numeric(counts: list[int], missing: int = 0) -> Histogram:
    return Histogram("numeric", counts, edges=[float(i) for i in range(len(counts) - 1)], missing=missing)


def categorical(counts: list[int]) -> Histogram:
    return Histogram("categorical", counts, categories=[f"c{i}" for i in range(len(counts) - 1)])


def test_align_places_bins_missing_and_unknown_labels() -> None:
    hist = numeric([10, 20, 30], missing=5)
    live = {"0": 1.0, "2": 4.0, "missing": 2.0, "7": 9.0, "other": 1.0}
    with_missing = monitor.align(hist, live, with_missing=True)
    assert with_missing.reference.tolist() == [10, 20, 30, 5]
    assert with_missing.current.tolist() == [1, 0, 4, 2]
    assert with_missing.unknown == 10
    without = monitor.align(hist, live, with_missing=False)
    assert without.reference.tolist() == [10, 20, 30] and without.current.tolist() == [1, 0, 4]


@pytest.mark.parametrize(("method", "value", "threshold", "want"), [
    ("psi", 0.3, 0.2, True), ("psi", 0.1, 0.2, False), ("jensenShannon", 0.25, 0.1, True),
    ("wasserstein", 0.5, 1.0, False), ("ks", 0.001, 0.01, True), ("ks", 0.5, 0.01, False),
    ("chiSquared", 0.2, 0.05, False), ("chiSquared", 1e-9, 0.05, True), ("psi", float("nan"), 0.2, False),
    ("ks", float("nan"), 0.01, False),
])
def test_verdicts_follow_the_crd(method: str, value: float, threshold: float, want: bool) -> None:
    assert monitor.drifted(method, value, threshold) is want


@pytest.mark.parametrize("method", ["psi", "jensenShannon", "chiSquared", "ks", "wasserstein"])
def test_scores_use_the_statistics(method: str) -> None:
    hist = numeric([100, 200, 300, 400])
    aligned = monitor.align(hist, {"0": 400.0, "1": 300.0, "2": 200.0, "3": 100.0}, with_missing=False)
    ref, cur = aligned.reference, aligned.current
    want = {"psi": stats.psi(ref, cur), "jensenShannon": stats.jensen_shannon(ref, cur),
            "chiSquared": stats.chi_squared(ref, cur)[1], "ks": stats.ks_binned(ref, cur)[1],
            "wasserstein": stats.wasserstein_binned(ref, cur, np.array(hist.edges))}[method]
    assert monitor.score(method, aligned, hist) == pytest.approx(want)


def config(**spec: object) -> DriftConfig:
    body = {"deployment": "churn", "window": "30m", "schedule": "1m", "minSamples": 100, **spec}
    return parse(DriftConfig, {"name": "churn-drift", "namespace": "team-a", "deployment": "churn", "version": "v3",
                               "referenceUri": "file:///models/v3", "prometheusUrl": "http://prom:9090",
                               "spec": body})


REFERENCE = Reference(rows=1000, features={"age": numeric([250, 250, 250, 250]), "plan": categorical([600, 300, 100])},
                      prediction=numeric([500, 500]))
NOW = datetime(2026, 11, 23, 10, 15, tzinfo=UTC)


def test_report_flags_the_shifted_feature_only() -> None:
    live = {"age": {"0": 100.0, "1": 100.0, "2": 100.0, "3": 100.0},
            "plan": {"0": 40.0, "1": 60.0, "2": 300.0},
            "prediction": {"0": 200.0, "1": 200.0}}
    report = monitor.build_report(config(), REFERENCE, live, NOW)
    assert report["time"] == "2026-11-23T10:15:00Z" and report["window"] == "30m" and report["version"] == "v3"
    assert report["samples"] == 400
    assert report["drifted"] is True and report["driftedFeatures"] == ["plan"]
    by_name = {f["name"]: f for f in report["features"]}
    assert list(by_name) == ["age", "plan", "prediction"]
    assert by_name["age"]["method"] == "psi" and by_name["age"]["score"] < 0.01 and by_name["age"]["threshold"] == 0.2
    assert by_name["plan"]["method"] == "chiSquared" and by_name["plan"]["score"] < 0.01
    assert not by_name["prediction"]["drifted"]


def test_report_with_too_few_samples_gives_no_verdict_and_says_why() -> None:
    live = {"age": {"3": 50.0}, "prediction": {"0": 50.0}}
    report = monitor.build_report(config(), REFERENCE, live, NOW)
    assert report["drifted"] is False and report["features"] == [] and report["samples"] == 50
    assert "fewer than minSamples 100" in report["reason"]


def test_report_lists_features_it_cannot_score() -> None:
    live = {"age": {"0": 300.0}, "prediction": {"0": 150.0, "1": 150.0}}  # no live plan values
    report = monitor.build_report(config(features=["age", "plan", "tenure"], prediction=False), REFERENCE, live, NOW)
    assert [f["name"] for f in report["features"]] == ["age"]
    assert report["features"][0]["drifted"] is True
    assert report["skipped"] == [{"name": "plan", "reason": "no live values in the reference's bins"}]
    assert report["unknownFeatures"] == ["tenure"]


def test_samples_fall_back_to_the_busiest_feature() -> None:
    assert monitor.samples_in({"a": {"0": 10.0, "missing": 5.0}, "b": {"1": 12.0}}) == 15
    assert monitor.samples_in({}) == 0


@pytest.mark.parametrize(("override", "field"), [
    ({"spec": {"deployment": "churn", "window": "30 minutes"}}, "spec.window"),
    ({"spec": {"deployment": "churn", "schedule": "0s"}}, "spec.schedule"),
    ({"spec": {"deployment": "churn", "tests": {"numeric": {"method": "chiSquared", "threshold": 0.1}}}},
     "spec.tests.numeric.method"),
    ({"spec": {"deployment": "churn", "tests": {"categorical": {"method": "ks", "threshold": 0.1}}}},
     "spec.tests.categorical.method"),
    ({"prometheusUrl": None}, "prometheusUrl"),
    ({"referenceUri": None}, "referenceUri"),
])
def test_check_names_the_field_it_cannot_run_with(override: dict, field: str) -> None:
    body = {"name": "m", "deployment": "churn", "referenceUri": "file:///x", "prometheusUrl": "http://p",
            "spec": {"deployment": "churn"}, **override}
    with pytest.raises(ConfigError, match=f"invalid config: {field}"):
        monitor.check(parse(DriftConfig, body))

"""Metrics, baselines, gates, slices and calibration, checked against scikit-learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from mlcycle_runtime.config import Gates
from mlcycle_runtime.train import evaluate


@pytest.fixture
def scored():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    p = np.clip(y * 0.3 + rng.uniform(0, 0.7, 500), 0, 1)
    return y, p


def test_binary_metrics_match_sklearn(scored):
    y, p = scored
    m = evaluate.compute("binary", y, p, calibration=True)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, p))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p >= 0.5))
    assert m["f1"] == pytest.approx(skm.f1_score(y, p >= 0.5))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    assert set(m) == {*evaluate.BINARY, *evaluate.CALIBRATION}


def test_calibration_only_when_asked(scored):
    assert "brier" not in evaluate.compute("binary", *scored)


def test_ece_by_hand():
    # Two bins used: [0.1, 0.1] with 0 of 2 positive (gap 0.2), [0.9, 0.9] with 1 of 2 (gap 0.8).
    y = np.array([0, 0, 1, 0])
    p = np.array([0.1, 0.1, 0.9, 0.9])
    assert evaluate.expected_calibration_error(y, p) == pytest.approx((0.2 + 0.8) / 4)
    assert evaluate.expected_calibration_error(np.array([1, 0]), np.array([1.0, 0.0])) == 0.0


def test_regression_metrics_match_sklearn():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.5, 2.0, 2.5, 5.0])
    m = evaluate.compute("regression", y, p)
    assert m == pytest.approx({"rmse": np.sqrt(skm.mean_squared_error(y, p)),
                               "mae": skm.mean_absolute_error(y, p), "r2": skm.r2_score(y, p)})


def test_ranking_metrics_are_left_out_on_one_class():
    m = evaluate.compute("binary", np.array([1, 1, 1]), np.array([0.2, 0.7, 0.9]))
    assert "roc_auc" not in m and m["accuracy"] == pytest.approx(2 / 3)


def test_zero_rule_predicts_the_prior_and_scores_chance(scored):
    y, _ = scored
    y_train = np.array([0] * 70 + [1] * 30)
    scores = evaluate.baseline_scores("binary", y_train, len(y), "zeroRule")
    assert np.allclose(scores, 0.3)
    assert evaluate.compute("binary", y, scores)["roc_auc"] == 0.5


def test_random_baseline_is_stratified_and_seeded():
    y_train = np.array([0] * 70 + [1] * 30)
    a = evaluate.baseline_scores("binary", y_train, 5000, "random", seed=1)
    assert set(np.unique(a)) <= {0.0, 1.0} and a.mean() == pytest.approx(0.3, abs=0.03)
    assert np.array_equal(a, evaluate.baseline_scores("binary", y_train, 5000, "random", seed=1))


def test_regression_baselines():
    y_train = np.array([1.0, 2.0, 6.0])
    assert np.allclose(evaluate.baseline_scores("regression", y_train, 4, "zeroRule"), 3.0)
    assert set(evaluate.baseline_scores("regression", y_train, 50, "random")) <= {1.0, 2.0, 6.0}


def gate(gates, name):
    return next(g for g in gates if g["name"] == name)


def test_gates_in_the_max_direction():
    baselines = {"zeroRule": {"roc_auc": 0.5}, "champion": {"roc_auc": 0.82}}
    spec = Gates(min_metric=0.75, min_lift_over_champion=0.0, min_lift_over_baseline=0.1)
    gates = evaluate.gates(spec, "roc_auc", "max", {"roc_auc": 0.8}, baselines)
    assert gate(gates, "minMetric") == {"name": "minMetric", "threshold": 0.75, "value": 0.8, "passed": True}
    assert gate(gates, "minLiftOverChampion") == {"name": "minLiftOverChampion", "threshold": 0.0,
                                                  "value": pytest.approx(-0.02), "passed": False}
    assert gate(gates, "minLiftOverBaseline")["passed"] is True


def test_gates_in_the_min_direction():
    spec = Gates(min_metric=0.5, min_lift_over_baseline=0.05)
    gates = evaluate.gates(spec, "log_loss", "min", {"log_loss": 0.45}, {"zeroRule": {"log_loss": 0.57}})
    assert gate(gates, "minMetric")["passed"] is True  # 0.45 <= 0.5
    assert gate(gates, "minLiftOverBaseline")["value"] == pytest.approx(0.12)
    assert evaluate.gates(Gates(min_metric=0.4), "log_loss", "min", {"log_loss": 0.45}, {})[0]["passed"] is False


def test_the_champion_gate_needs_a_champion():
    gates = evaluate.gates(Gates(min_lift_over_champion=0.0), "roc_auc", "max", {"roc_auc": 0.8},
                           {"zeroRule": {"roc_auc": 0.5}})
    assert [g["name"] for g in gates] == ["minLiftOverBaseline"]


def test_a_gate_on_an_unmeasured_metric_fails():
    gates = evaluate.gates(Gates(min_metric=0.1, min_lift_over_baseline=None), "roc_auc", "max", {}, {})
    assert gates == [{"name": "minMetric", "threshold": 0.1, "value": None, "passed": False}]


def test_slices_per_value_with_missing_and_numeric_quartiles():
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame({"plan": rng.choice(["basic", "premium", None], n), "charges": rng.uniform(0, 100, n)})
    y = rng.integers(0, 2, n)
    p = rng.uniform(size=n)
    out = evaluate.slices(frame, ["plan", "charges"], "binary", y, p)
    plans = [s for s in out if s["column"] == "plan"]
    assert [s["value"] for s in plans] == ["(missing)", "basic", "premium"]
    mask = (frame["plan"] == "basic").to_numpy()
    basic = plans[1]
    assert basic["rows"] == mask.sum()
    assert basic["metrics"]["roc_auc"] == pytest.approx(skm.roc_auc_score(y[mask], p[mask]))
    charges = [s for s in out if s["column"] == "charges"]
    assert len(charges) == 4 and sum(s["rows"] for s in charges) == n


@pytest.mark.parametrize(("value", "ref", "mode", "lift"), [(0.8, 0.7, "max", 0.1), (0.3, 0.4, "min", 0.1)])
def test_lift_is_positive_when_better(value, ref, mode, lift):
    assert evaluate.lift(value, ref, mode) == pytest.approx(lift)

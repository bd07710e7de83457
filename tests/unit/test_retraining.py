"""retraining.decide: each rule in its order, and a Start that names its TrainingJob after the report."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from mlcycle_operator import retraining
from mlcycle_operator.api.driftmonitor import DriftMonitorSpec
from mlcycle_operator.api.mlproject import MLProjectSpec, RetrainingPolicy

MANIFESTS = Path(__file__).resolve().parents[2] / "examples" / "churn" / "manifests"
MONITOR_SPEC = yaml.safe_load((MANIFESTS / "04-driftmonitor.yaml").read_text())["spec"]
PROJECT_SPEC = yaml.safe_load((MANIFESTS / "01-mlproject.yaml").read_text())["spec"]

REPORT_TIME = "2025-03-01T12:00:00Z"
NOW = datetime(2025, 3, 1, 12, 0, 30, tzinfo=UTC)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def monitor(**retrain) -> DriftMonitorSpec:
    """The example monitor (minSamples 500, retrain cooldown 6h, maxPerDay 2) with retrain settings changed."""
    spec = {**MONITOR_SPEC, "actions": {"retrain": {**MONITOR_SPEC["actions"]["retrain"], **retrain}}}
    return DriftMonitorSpec.model_validate(spec)


def policy(**changes) -> RetrainingPolicy:
    """The example project's policy (cooldown 6h, maxConcurrent 1, dailyBudget 3) with changes."""
    return MLProjectSpec.model_validate(PROJECT_SPEC).retraining.model_copy(update=changes)


def report(drifted: dict[str, float] | None = None, samples: int = 1000, time: str = REPORT_TIME,
           stable: dict[str, float] | None = None) -> dict:
    """A monitor report; `drifted` and `stable` map feature names to scores."""
    drifted = {"tenure_months": 0.3127} if drifted is None else drifted
    stable = {"monthly_charges": 0.0412} if stable is None else stable
    features = [{"name": n, "method": "psi", "score": s, "threshold": 0.2, "drifted": is_drifted}
                for scores, is_drifted in ((drifted, True), (stable, False)) for n, s in scores.items()]
    return {"time": time, "window": "30m", "samples": samples, "features": features, "drifted": bool(drifted),
            "driftedFeatures": list(drifted)}


def retrained(ago: timedelta | None = None, today: int = 0, day: str | None = None) -> dict:
    """A monitor status: the last retraining `ago` before NOW, `today` retrainings counted on `day`."""
    status: dict = {"retrainsToday": today, "retrainDay": day or NOW.date().isoformat()}
    if ago is not None:
        status["lastRetrain"] = {"time": (NOW - ago).isoformat().replace("+00:00", "Z"), "trainingJob": "churn-old",
                                 "reason": "drift"}
    return status


def decide(spec=None, status=None, rep=None, pol=None, active=0, now=NOW, name="churn"):
    return retraining.decide(spec or monitor(), status or {}, rep or report(), pol or policy(), active, now, name)


def test_the_example_monitor_starts_a_retraining_on_drift():
    decision = decide()
    assert decision.action == retraining.START
    assert decision.reason == "DriftDetected"
    assert decision.job_name


def test_no_drift_is_skipped():
    decision = decide(rep=report(drifted={}, stable={"tenure_months": 0.01}))
    assert (decision.action, decision.reason, decision.job_name) == (retraining.SKIP, "NoDrift", None)


def test_drifted_false_wins_over_listed_features():
    rep = report()
    rep["drifted"] = False
    assert decide(rep=rep).reason == "NoDrift"


@pytest.mark.parametrize(("samples", "action"), [(0, retraining.SKIP), (499, retraining.SKIP),
                                                   (500, retraining.START), (10_000, retraining.START)])
def test_not_enough_samples_is_skipped(samples, action):
    decision = decide(rep=report(samples=samples))
    assert decision.action == action
    if action == retraining.SKIP:
        assert decision.reason == "NotEnoughSamples"
        assert f"{samples} samples" in decision.message
        assert "500 needed" in decision.message


def test_missing_samples_count_as_zero():
    rep = report()
    del rep["samples"]
    assert decide(rep=rep).reason == "NotEnoughSamples"


def test_a_monitor_without_a_retrain_action_only_reports():
    spec = DriftMonitorSpec.model_validate({**MONITOR_SPEC, "actions": {}})
    decision = decide(spec=spec)
    assert (decision.action, decision.reason) == (retraining.SKIP, "ReportOnly")


def test_a_disabled_retrain_action_only_reports():
    decision = decide(spec=monitor(enabled=False))
    assert (decision.action, decision.reason) == (retraining.SKIP, "ReportOnly")


@pytest.mark.parametrize(("needed", "drifted", "action"), [
    (2, {"tenure_months": 0.3}, retraining.SKIP),
    (2, {"tenure_months": 0.3, "plan": 0.001}, retraining.START),
    (3, {"tenure_months": 0.3, "plan": 0.001}, retraining.SKIP),
    (1, {"tenure_months": 0.3}, retraining.START),
])
def test_too_few_drifted_features_is_skipped(needed, drifted, action):
    decision = decide(spec=monitor(minDriftedFeatures=needed), rep=report(drifted=drifted))
    assert decision.action == action
    if action == retraining.SKIP:
        assert decision.reason == "TooFewFeatures"
        assert f"{len(drifted)} drifted feature(s), {needed} needed" in decision.message


@pytest.mark.parametrize(("monitor_cooldown", "project_cooldown", "ago", "action"), [
    # The longer of the two applies, whichever side sets it.
    ("6h", "1h", timedelta(hours=2), retraining.SKIP),
    ("1h", "6h", timedelta(hours=2), retraining.SKIP),
    ("1h", "1h", timedelta(hours=2), retraining.START),
    ("6h", "1h", timedelta(hours=7), retraining.START),
    ("1h", "6h", timedelta(hours=7), retraining.START),
    # Boundaries: just inside the cooldown still waits; at its end a retraining may start.
    ("1h", "30m", timedelta(minutes=59, seconds=59), retraining.SKIP),
    ("30m", "1h", timedelta(hours=1), retraining.START),
])
def test_cooldown_is_the_longer_of_monitor_and_project(monitor_cooldown, project_cooldown, ago, action):
    decision = decide(spec=monitor(cooldown=monitor_cooldown), pol=policy(cooldown=project_cooldown),
                      status=retrained(ago=ago))
    assert decision.action == action
    if action == retraining.SKIP:
        assert decision.reason == "CoolingDown"


def test_cooldown_message_says_when_it_ends():
    decision = decide(spec=monitor(cooldown="6h"), pol=policy(cooldown="1h"), status=retrained(ago=timedelta(hours=2)))
    assert "cooldown ends in 240 min" in decision.message


def test_no_previous_retraining_means_no_cooldown():
    assert decide(status={}).action == retraining.START


@pytest.mark.parametrize(("max_per_day", "daily_budget", "today", "action"), [
    (2, 3, 1, retraining.START),
    (2, 3, 2, retraining.SKIP),  # the monitor's cap is the smaller
    (5, 3, 2, retraining.START),
    (5, 3, 3, retraining.SKIP),  # the project's budget is the smaller
    (0, 3, 0, retraining.SKIP),
    (2, 0, 0, retraining.SKIP),
])
def test_daily_cap_is_the_smaller_of_monitor_and_project(max_per_day, daily_budget, today, action):
    decision = decide(spec=monitor(maxPerDay=max_per_day), pol=policy(daily_budget=daily_budget),
                      status=retrained(today=today))
    assert decision.action == action
    if action == retraining.SKIP:
        assert decision.reason == "DailyCapReached"
        assert f"the cap is {min(max_per_day, daily_budget)}" in decision.message


def test_the_daily_counter_resets_on_a_new_utc_day():
    yesterday = (NOW - timedelta(days=1)).date().isoformat()
    assert decide(status=retrained(today=50, day=yesterday)).action == retraining.START
    assert decide(status=retrained(today=50)).reason == "DailyCapReached"


@pytest.mark.parametrize(("status", "now", "count"), [
    ({}, NOW, 0),
    ({"retrainsToday": 2, "retrainDay": "2025-03-01"}, NOW, 2),
    ({"retrainsToday": 2, "retrainDay": "2025-02-28"}, NOW, 0),
    ({"retrainsToday": 2, "retrainDay": "2025-03-01"}, datetime(2025, 3, 2, 0, 0, 1, tzinfo=UTC), 0),
    ({"retrainsToday": 2, "retrainDay": "2025-03-01"}, datetime(2025, 3, 1, 23, 59, 59, tzinfo=UTC), 2),
    ({"retrainsToday": None, "retrainDay": "2025-03-01"}, NOW, 0),
])
def test_retrain_day_count(status, now, count):
    assert retraining.retrain_day_count(status, now) == count


@pytest.mark.parametrize(("max_concurrent", "active", "action"), [
    (1, 0, retraining.START), (1, 1, retraining.SKIP), (2, 1, retraining.START), (2, 2, retraining.SKIP),
])
def test_too_many_running_is_skipped(max_concurrent, active, action):
    decision = decide(pol=policy(max_concurrent=max_concurrent), active=active)
    assert decision.action == action
    if action == retraining.SKIP:
        assert decision.reason == "TooManyRunning"


@pytest.mark.parametrize(("kwargs", "reason"), [
    pytest.param({"rep": report(drifted={}, samples=1)}, "NoDrift", id="no-drift-before-samples"),
    pytest.param({"rep": report(samples=1), "spec": monitor(enabled=False)}, "NotEnoughSamples",
                 id="samples-before-disabled"),
    pytest.param({"spec": monitor(enabled=False, minDriftedFeatures=5), "status": retrained(ago=timedelta(0))},
                 "ReportOnly", id="disabled-before-features-and-cooldown"),
    pytest.param({"spec": monitor(minDriftedFeatures=5), "status": retrained(ago=timedelta(0), today=9)},
                 "TooFewFeatures", id="features-before-cooldown"),
    pytest.param({"status": retrained(ago=timedelta(minutes=1), today=9), "active": 9}, "CoolingDown",
                 id="cooldown-before-cap"),
    pytest.param({"status": retrained(ago=timedelta(days=2), today=9), "active": 9}, "DailyCapReached",
                 id="cap-before-concurrency"),
])
def test_rules_apply_in_order(kwargs, reason):
    assert decide(**kwargs).reason == reason


def test_the_job_name_comes_from_the_report_time():
    first = decide(now=NOW)
    again = decide(now=NOW + timedelta(minutes=3))  # a retry after a crash sees the same report
    later = decide(rep=report(time="2025-03-01T12:05:00Z"))
    assert first.job_name == again.job_name == "churn-retrain-20250301-120000"
    assert later.job_name == "churn-retrain-20250301-120500"


def test_the_job_name_of_a_long_monitor_stays_a_unique_dns_label():
    names = {decide(name="m" * 70, rep=report(time=t)).job_name
             for t in ("2025-03-01T12:00:00Z", "2025-03-01T12:01:00Z", "2025-03-02T12:00:00Z")}
    assert len(names) == 3
    for name in names:
        assert len(name) <= 63
        assert DNS_LABEL.match(name)


def test_the_reason_lists_every_drifted_feature_with_its_score():
    decision = decide(rep=report(drifted={"tenure_months": 0.3127, "plan": 0.00213}, stable={"region": 0.05}),
                      spec=monitor(minDriftedFeatures=2))
    assert decision.message == "drift on tenure_months=0.313, plan=0.00213"
    assert "region" not in decision.message


def test_a_drifted_feature_without_a_score_is_still_named():
    rep = report(drifted={"tenure_months": 0.3127})
    rep["driftedFeatures"].append("prediction")
    assert decide(rep=rep).message == "drift on tenure_months=0.313, prediction"

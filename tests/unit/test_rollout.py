"""The rollout state machine: one test per transition, then whole rollouts driven through time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mlcycle_operator.api.modeldeployment import (
    AnalysisMetric,
    AnalysisRun,
    HistoryEntry,
    MetricMeasurement,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Rollout,
)
from mlcycle_operator.rollout import (
    ANALYSIS_RUNS_LIMIT,
    HISTORY_LIMIT,
    MIN_REQUEUE_SECONDS,
    READY_POLL_SECONDS,
    SAMPLE_POLL_SECONDS,
    Action,
    Decision,
    Observation,
    Reason,
    ShadowStats,
    analyse,
    analysis_due,
    apply_decision,
    decide,
    due_in,
    traffic_summary,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ERROR_RATE = AnalysisMetric(name="errorRate", type="errorRate", threshold=0.05)
ACCURACY = AnalysisMetric(name="accuracy", type="promql", query="acc{version='{{version}}'}", threshold=0.9,
                          comparison="greaterThan")


# --- builders ----------------------------------------------------------------------------------------------------


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def canary(steps=((10, "1m"), (50, "1m")), interval="1m", failure_limit=2, metrics=(ERROR_RATE,)) -> dict:
    return {"type": "Canary", "canary": {
        "steps": [{"weight": w, "pause": p} for w, p in steps],
        "analysis": {"interval": interval, "failureLimit": failure_limit, "metrics": [m.model_dump() for m in metrics]},
    }}


def shadow(**settings) -> dict:
    return {"type": "Shadow", "shadow": {"percent": 10, "duration": "10m", "minSamples": 100, **settings}}


def blue_green(preview="5m", interval="1m", failure_limit=2) -> dict:
    return {"type": "BlueGreen", "blueGreen": {
        "previewDuration": preview,
        "analysis": {"interval": interval, "failureLimit": failure_limit, "metrics": [ERROR_RATE.model_dump()]},
    }}


def make_spec(strategy: dict | None = None) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate({
        "project": "churn", "model": {"name": "churn", "track": {}}, "strategy": strategy or {},
    })


def make_status(stable: str | None = "v1", rollout: Rollout | None = None, history=()) -> ModelDeploymentStatus:
    candidate = rollout.candidate_version if rollout else None
    return ModelDeploymentStatus(stable_version=stable, candidate_version=candidate, rollout=rollout,
                                 history=list(history))


def rolling(candidate="v2", step=0, step_started: datetime | None = T0, failures=0, runs=(), started=T0) -> Rollout:
    """A rollout under way; by default its candidate became ready, and step 0 began, at T0."""
    return Rollout(candidate_version=candidate, step=step, step_started_at=step_started, failures=failures,
                   analysis_runs=list(runs), started_at=started)


def run(seconds: float, verdict: str, step: int = 0) -> AnalysisRun:
    return AnalysisRun(time=at(seconds), step=step, verdict=verdict)


def healthy() -> list[MetricMeasurement]:
    return [MetricMeasurement(name="errorRate", value=0.01, threshold=0.05)]


def failing() -> list[MetricMeasurement]:
    return [MetricMeasurement(name="errorRate", value=0.2, threshold=0.05)]


UNSET = object()


def observe(seconds: float = 0, desired: str | None = "v2", ready=("v1", "v2"), existing=None,
            measurements=UNSET, shadow_stats: ShadowStats | None = None) -> Observation:
    return Observation(now=at(seconds), desired_version=desired, ready_versions=frozenset(ready),
                       existing_versions=frozenset(ready if existing is None else existing),
                       measurements=healthy() if measurements is UNSET else measurements, shadow=shadow_stats)


def weights(decision: Decision) -> dict[str, int]:
    return {t.version: t.weight for t in decision.traffic}


def drive(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, seconds, **observed):
    """Call decide() at each moment, writing every decision into status as the handler would."""
    decisions = []
    for moment in seconds:
        decision = decide(spec, status, observe(moment, **observed))
        status = apply_decision(status, decision)
        decisions.append(decision)
    return decisions, status


# --- nothing to serve, first version, steady state ---------------------------------------------------------------


def test_nothing_to_serve():
    decision = decide(make_spec(), make_status(stable=None), observe(desired=None, ready=()))
    assert (decision.action, decision.reason) == (Action.NOTHING, Reason.NOTHING_TO_SERVE)
    assert decision.traffic == ()
    assert decision.stable_version is None and decision.candidate_version is None
    assert decision.requeue_after is None


def test_spec_resolving_to_nothing_keeps_the_serving_version():
    decision = decide(make_spec(), make_status(), observe(desired=None))
    assert decision.action is Action.NOTHING
    assert weights(decision) == {"v1": 100}


def test_spec_resolving_to_nothing_mid_rollout_goes_on_with_the_candidate():
    decision = decide(make_spec(canary()), make_status(rollout=rolling()), observe(30, desired=None))
    assert decision.action is Action.HOLD
    assert weights(decision) == {"v1": 90, "v2": 10}


def test_first_version_waits_for_ready_with_no_traffic():
    decision = decide(make_spec(), make_status(stable=None), observe(desired="v1", ready=(), existing=("v1",)))
    assert (decision.action, decision.reason) == (Action.WAIT_READY, Reason.INITIAL_VERSION_NOT_READY)
    assert decision.traffic == ()
    assert decision.candidate_version == "v1"  # so the handler brings its Deployment up
    assert decision.stable_version is None and decision.rollout is None
    assert decision.requeue_after == READY_POLL_SECONDS


def test_first_version_becomes_stable_directly_once_ready():
    decision = decide(make_spec(canary()), make_status(stable=None), observe(desired="v1", ready=("v1",)))
    assert decision.action is Action.DEPLOY_INITIAL
    assert decision.stable_version == "v1" and decision.candidate_version is None
    assert weights(decision) == {"v1": 100}
    assert decision.rollout is None
    assert decision.history_entry.outcome == "Promoted" and decision.history_entry.version == "v1"


def test_steady_state():
    decision = decide(make_spec(), make_status(), observe(desired="v1"))
    assert (decision.action, decision.reason) == (Action.NOTHING, Reason.STABLE_VERSION_SERVING)
    assert [(t.version, t.weight, t.role) for t in decision.traffic] == [("v1", 100, "stable")]
    assert decision.rollout is None and decision.history_entry is None and decision.requeue_after is None


# --- starting and waiting for the candidate ----------------------------------------------------------------------


def test_start_waits_for_the_candidate_with_zero_weight():
    decision = decide(make_spec(canary()), make_status(), observe(ready=("v1",), existing=("v1",)))
    assert (decision.action, decision.reason) == (Action.START, Reason.ROLLOUT_STARTED)
    assert decision.candidate_version == "v2" and decision.stable_version == "v1"
    assert weights(decision) == {"v1": 100, "v2": 0}
    assert decision.rollout == Rollout(candidate_version="v2", step=0, started_at=T0)
    assert decision.requeue_after == READY_POLL_SECONDS
    assert "v2" in decision.message and "v1" in decision.message


def test_start_with_a_ready_candidate_begins_the_first_step():
    decision = decide(make_spec(canary()), make_status(), observe())
    assert decision.action is Action.START
    assert weights(decision) == {"v1": 90, "v2": 10}
    assert decision.rollout.step == 0 and decision.rollout.step_started_at == T0
    assert decision.requeue_after == 60


def test_default_canary_when_settings_are_omitted():
    decision = decide(make_spec({"type": "Canary"}), make_status(), observe())
    assert weights(decision) == {"v1": 90, "v2": 10}  # Canary()'s first step


def test_wait_for_ready_during_a_rollout():
    status = make_status(rollout=rolling(step_started=None))
    decision = decide(make_spec(canary()), status, observe(30, ready=("v1",), existing=("v1", "v2")))
    assert (decision.action, decision.reason) == (Action.WAIT_READY, Reason.CANDIDATE_NOT_READY)
    assert weights(decision) == {"v1": 100, "v2": 0}
    assert decision.rollout == status.rollout


def test_candidate_becoming_ready_begins_step_one():
    status = make_status(rollout=rolling(step_started=None))
    decision = decide(make_spec(canary()), status, observe(30))
    assert (decision.action, decision.reason) == (Action.ADVANCE, Reason.CANDIDATE_READY)
    assert weights(decision) == {"v1": 90, "v2": 10}
    assert decision.rollout.step_started_at == at(30)


def test_candidate_no_longer_ready_loses_its_traffic_but_keeps_its_step():
    status = make_status(rollout=rolling(step=1, failures=1))
    decision = decide(make_spec(canary()), status, observe(30, ready=("v1",), existing=("v1", "v2")))
    assert decision.action is Action.WAIT_READY
    assert weights(decision) == {"v1": 100, "v2": 0}
    assert decision.rollout == status.rollout
    assert "no longer ready" in decision.message


def test_candidate_not_created_yet_is_not_a_disappearance():
    status = make_status(rollout=rolling(step_started=None))
    decision = decide(make_spec(canary()), status, observe(5, ready=("v1",), existing=("v1",)))
    assert decision.action is Action.WAIT_READY


def test_candidate_disappearing_rolls_back():
    status = make_status(rollout=rolling(step=1))
    decision = decide(make_spec(canary()), status, observe(30, ready=("v1",), existing=("v1",)))
    assert (decision.action, decision.reason) == (Action.ROLL_BACK, Reason.CANDIDATE_DISAPPEARED)
    assert weights(decision) == {"v1": 100}
    assert decision.candidate_version is None and decision.rollout is None
    assert decision.history_entry.outcome == "RolledBack" and decision.history_entry.version == "v2"
    assert "disappeared" in decision.message


# --- canary steps and analysis -----------------------------------------------------------------------------------


def test_hold_while_pause_not_elapsed_and_no_analysis_due():
    spec = make_spec(canary(steps=((10, "5m"), (50, "5m")), interval="2m"))
    decision = decide(spec, make_status(rollout=rolling()), observe(30))
    assert (decision.action, decision.reason) == (Action.HOLD, Reason.STEP_HOLDING)
    assert weights(decision) == {"v1": 90, "v2": 10}
    assert decision.analysis_run is None
    assert decision.requeue_after == 90  # the first analysis, 2m after the step began


def test_analysis_pass_while_pause_holds():
    spec = make_spec(canary(steps=((10, "5m"), (50, "5m")), interval="1m"))
    decision = decide(spec, make_status(rollout=rolling()), observe(60))
    assert (decision.action, decision.reason) == (Action.ANALYSE, Reason.ANALYSIS_PASSED)
    assert decision.analysis_run.verdict == "Pass"
    assert decision.rollout.analysis_runs == [decision.analysis_run]
    assert decision.rollout.failures == 0 and decision.rollout.step == 0
    assert weights(decision) == {"v1": 90, "v2": 10}
    assert decision.requeue_after == 60


def test_analysis_fail_below_the_limit_counts_and_holds():
    spec = make_spec(canary(failure_limit=3))
    decision = decide(spec, make_status(rollout=rolling()), observe(60, measurements=failing()))
    assert (decision.action, decision.reason) == (Action.ANALYSE, Reason.ANALYSIS_FAILED)
    assert decision.rollout.failures == 1
    assert weights(decision) == {"v1": 90, "v2": 10}
    assert "errorRate 0.2 is not below 0.05" in decision.message


def test_failure_reaching_the_limit_rolls_back():
    spec = make_spec(canary(failure_limit=2))
    status = make_status(rollout=rolling(failures=1, runs=[run(60, "Fail")]))
    decision = decide(spec, status, observe(120, measurements=failing()))
    assert (decision.action, decision.reason) == (Action.ROLL_BACK, Reason.ROLLED_BACK)
    assert weights(decision) == {"v1": 100}
    assert decision.stable_version == "v1" and decision.candidate_version is None and decision.rollout is None
    entry = decision.history_entry
    assert (entry.version, entry.outcome, entry.time) == ("v2", "RolledBack", at(120))
    assert "errorRate 0.2 is not below 0.05" in entry.reason  # which metric, its value and its threshold
    assert decision.analysis_run.verdict == "Fail"


def test_the_history_entry_keeps_the_runs_that_decided_it():
    """status.rollout (and its runs) goes with the rollback; the entry keeps them, the deciding run last."""
    spec = make_spec(canary(failure_limit=2))
    status = make_status(rollout=rolling(failures=1, runs=[run(60, "Fail")]))
    decision = decide(spec, status, observe(120, measurements=failing()))
    after = apply_decision(status, decision)
    assert after.rollout is None
    kept = after.history[-1].analysis_runs
    assert [r.verdict for r in kept] == ["Fail", "Fail"] and kept[-1] == decision.analysis_run
    assert kept[-1].measurements[0].value == 0.2


def test_a_history_entry_keeps_at_most_ten_runs():
    spec = make_spec(canary(failure_limit=2))
    runs = [run(i, "Pass") for i in range(30)] + [run(40, "Fail")]
    status = make_status(rollout=rolling(failures=1, runs=runs))
    after = apply_decision(status, decide(spec, status, observe(120, measurements=failing())))
    assert len(after.history[-1].analysis_runs) == 10
    assert after.history[-1].analysis_runs[-1].time == at(120)


def test_unreachable_prometheus_is_inconclusive_and_never_rolls_back():
    spec = make_spec(canary(failure_limit=1))
    decisions, status = drive(spec, make_status(rollout=rolling()), range(0, 3600, 30), measurements=None)
    analysed = [d for d in decisions if d.analysis_run is not None]
    assert len(analysed) == 59
    assert {d.reason for d in analysed} == {Reason.ANALYSIS_INCONCLUSIVE}
    assert all(d.action in (Action.ANALYSE, Action.HOLD) for d in decisions)
    assert status.rollout.failures == 0 and status.rollout.step == 0  # no rollback, and no advance without a pass
    assert weights(decisions[-1]) == {"v1": 90, "v2": 10}


def test_advance_when_pause_elapsed_after_a_pass():
    status = make_status(rollout=rolling(runs=[run(30, "Pass")]))
    spec = make_spec(canary(steps=((10, "1m"), (50, "1m")), interval="45s"))
    decision = decide(spec, status, observe(60))
    assert (decision.action, decision.reason) == (Action.ADVANCE, Reason.STEP_ADVANCED)
    assert weights(decision) == {"v1": 50, "v2": 50}
    assert decision.rollout.step == 1 and decision.rollout.step_started_at == at(60)
    assert "step 2 of 2" in decision.message


def test_advance_and_analysis_in_one_decision():
    decision = decide(make_spec(canary()), make_status(rollout=rolling()), observe(60))
    assert decision.action is Action.ADVANCE
    assert decision.analysis_run.verdict == "Pass" and decision.analysis_run.step == 0
    assert decision.rollout.analysis_runs == [decision.analysis_run]


@pytest.mark.parametrize(("runs", "advances"), [
    ([], False),  # no evidence yet
    ([run(30, "Pass")], True),
    ([run(20, "Pass"), run(40, "Inconclusive")], True),  # inconclusive neither helps nor hurts
    ([run(20, "Pass"), run(40, "Fail")], False),  # a fail since the last pass
    ([run(20, "Fail"), run(40, "Pass")], True),
    ([run(-30, "Pass")], False),  # a pass before this step began
])
def test_advance_needs_a_pass_with_no_fail_since(runs, advances):
    spec = make_spec(canary(steps=((10, "1m"), (50, "1m")), interval="45s", failure_limit=5))
    # Whatever is due now is inconclusive, so only the recorded runs decide.
    decision = decide(spec, make_status(rollout=rolling(runs=runs)), observe(61, measurements=None))
    assert (decision.action is Action.ADVANCE) == advances


def test_pause_over_but_waiting_for_a_pass_says_so():
    spec = make_spec(canary(interval="45s", failure_limit=5))
    status = make_status(rollout=rolling(runs=[run(45, "Fail")], failures=1))
    decision = decide(spec, status, observe(70))
    assert decision.action is Action.HOLD
    assert "waiting for a passing analysis" in decision.message
    assert decision.requeue_after == 20


def test_promote_after_the_last_step_goes_to_100_percent():
    spec = make_spec(canary(steps=((10, "1m"), (50, "1m"))))
    status = make_status(rollout=rolling(step=1, step_started=at(600), runs=[run(630, "Pass", step=1)]))
    decision = decide(spec, status, observe(660))
    assert (decision.action, decision.reason) == (Action.PROMOTE, Reason.PROMOTED)
    assert [(t.version, t.weight, t.role) for t in decision.traffic] == [("v2", 100, "stable")]
    assert decision.stable_version == "v2" and decision.candidate_version is None and decision.rollout is None
    assert (decision.history_entry.version, decision.history_entry.outcome) == ("v2", "Promoted")


def test_steps_removed_mid_rollout_use_the_last_remaining_step():
    spec = make_spec(canary(steps=((20, "1m"),)))
    decision = decide(spec, make_status(rollout=rolling(step=2, runs=[run(30, "Pass", step=0)])), observe(40))
    assert weights(decision) == {"v1": 80, "v2": 20}


def test_zero_interval_still_analyses_at_most_once_a_second():
    # The API refuses "0s" now; an object stored before it did may still hold one.
    spec = make_spec(canary(steps=((10, "1h"),), interval="1s"))
    spec.strategy.canary.analysis.interval = "0s"
    decisions, _ = drive(spec, make_status(rollout=rolling()), [10, 10, 10.5, 11])
    assert [d.action for d in decisions] == [Action.ANALYSE, Action.HOLD, Action.HOLD, Action.ANALYSE]


def test_a_whole_canary_from_start_to_promotion():
    spec = make_spec(canary(steps=((10, "1m"), (50, "1m"), (100, "1m"))))
    decisions, status = drive(spec, make_status(), [0, 30, 90, 150], ready=("v1",), existing=("v1",))
    assert [d.action for d in decisions] == [Action.START] + [Action.WAIT_READY] * 3  # nothing moves before ready

    decisions, status = drive(spec, status, [155, 180, 215, 245, 275, 300, 335, 350])
    assert [(d.action, weights(d)) for d in decisions] == [
        (Action.ADVANCE, {"v1": 90, "v2": 10}),  # v2 ready: step 1 begins
        (Action.HOLD, {"v1": 90, "v2": 10}),
        (Action.ADVANCE, {"v1": 50, "v2": 50}),  # a pass, and the pause is over
        (Action.HOLD, {"v1": 50, "v2": 50}),
        (Action.ADVANCE, {"v1": 0, "v2": 100}),
        (Action.HOLD, {"v1": 0, "v2": 100}),
        (Action.PROMOTE, {"v2": 100}),
        (Action.NOTHING, {"v2": 100}),
    ]
    assert status.stable_version == "v2" and status.rollout is None
    assert [h.outcome for h in status.history] == ["Promoted"]
    assert status.traffic_summary == "v2=100"


def test_a_bad_canary_is_rolled_back_within_interval_times_failure_limit():
    spec = make_spec(canary(interval="30s", failure_limit=3))
    decisions, status = drive(spec, make_status(rollout=rolling()), range(0, 300, 10), measurements=failing())
    rollback = next(i for i, d in enumerate(decisions) if d.action is Action.ROLL_BACK)
    assert rollback * 10 <= 30 * 3
    assert status.stable_version == "v1" and weights(decisions[-1]) == {"v1": 100}
    assert [h.outcome for h in status.history] == ["RolledBack"]
    assert {d.reason for d in decisions[rollback + 1:]} == {Reason.CANDIDATE_REJECTED}


def test_analysis_runs_stay_bounded():
    spec = make_spec(canary(steps=((10, "10h"),), interval="1m"))
    _, status = drive(spec, make_status(rollout=rolling()), range(60, 60 * 81, 60), measurements=None)
    assert len(status.rollout.analysis_runs) == ANALYSIS_RUNS_LIMIT
    assert status.rollout.analysis_runs[-1].time == at(60 * 80)  # the newest are the ones kept


def test_the_last_pass_survives_trimming_of_old_runs():
    spec = make_spec(canary(steps=((10, "2h"), (50, "1m")), interval="1m"))
    _, status = drive(spec, make_status(rollout=rolling()), [60])
    _, status = drive(spec, status, range(120, 60 * 120, 60), measurements=None)
    assert len(status.rollout.analysis_runs) == ANALYSIS_RUNS_LIMIT
    # The pass at 60s was trimmed away: the step waits for a new one rather than advance without evidence.
    decision = decide(spec, status, observe(60 * 120, measurements=None))
    assert decision.action is Action.ANALYSE and decision.rollout.step == 0
    decision = decide(spec, status, observe(60 * 120))
    assert decision.action is Action.ADVANCE


@pytest.mark.parametrize(("strategy", "measured"), [
    (canary(interval="45s"), True), (blue_green(interval="45s"), True),
    (shadow(), False), ({"type": "Recreate"}, False),
], ids=["Canary", "BlueGreen", "Shadow", "Recreate"])
def test_analysis_due_tells_the_handler_when_to_measure(strategy, measured):
    spec, status = make_spec(strategy), make_status()
    runs = 0
    for moment in range(0, 400, 15):
        due = analysis_due(spec, status, at(moment))
        decision = decide(spec, status, observe(moment))
        assert due == (decision.analysis_run is not None)
        runs += due
        status = apply_decision(status, decision)
    assert (runs > 0) == measured


@pytest.mark.parametrize(("strategy", "status", "seconds", "due"), [
    (canary(interval="45s"), make_status(rollout=rolling()), 30, 15),  # the first run, one interval in
    (canary(interval="45s"), make_status(rollout=rolling(runs=[run(45, "Pass")])), 50, 10),  # the pause ends first
    (canary(interval="45s"), make_status(rollout=rolling(runs=[run(45, "Pass")])), 61, 29),  # pause over: next run
    (canary(interval="45s"), make_status(rollout=rolling()), 50, 0),  # overdue (an operator that was down)
    (blue_green(preview="5m", interval="1m"), make_status(rollout=rolling()), 0, 60),
    (shadow(), make_status(rollout=rolling()), 60, 540),  # the mirroring's duration ends
    (shadow(), make_status(rollout=rolling()), 700, None),  # past it: waiting for samples, not for the clock
    ({"type": "Recreate"}, make_status(rollout=rolling()), 0, None),
    (canary(), make_status(rollout=rolling(step_started=None)), 0, None),  # the candidate is not ready yet
    (canary(), make_status(), 0, None),  # no rollout
], ids=["first-run", "pause-end", "next-run", "overdue", "blue-green", "shadow", "shadow-samples", "recreate",
        "not-ready", "at-rest"])
def test_due_in_says_when_the_clock_next_gives_decide_something_to_do(strategy, status, seconds, due):
    assert due_in(make_spec(strategy), status, at(seconds)) == due


def test_a_bad_canary_woken_when_due_is_rolled_back_at_exactly_interval_times_failure_limit():
    # The handler sleeps until due_in() says and decides then: no tick adds to interval x failureLimit.
    spec = make_spec(canary(steps=((20, "10s"), (60, "6s")), interval="4s", failure_limit=2))
    status, now, decision = make_status(rollout=rolling()), 0.0, None
    while decision is None or decision.action is not Action.ROLL_BACK:
        now += due_in(spec, status, at(now))
        decision = decide(spec, status, observe(now, measurements=failing()))
        status = apply_decision(status, decision)
    assert now == 8 and status.history[-1].time == at(8)


# --- analysis verdicts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("measured", "verdict"), [
    ({"errorRate": 0.01, "accuracy": 0.95}, "Pass"),
    ({"errorRate": 0.2, "accuracy": 0.95}, "Fail"),
    ({"errorRate": 0.01, "accuracy": 0.85}, "Fail"),  # greaterThan: healthy above the threshold
    ({"errorRate": 0.05, "accuracy": 0.95}, "Fail"),  # the threshold itself is not within it
    ({"errorRate": 0.01, "accuracy": None}, "Inconclusive"),
    ({"errorRate": 0.01}, "Inconclusive"),  # a metric of the spec that was not measured at all
    ({"errorRate": float("nan"), "accuracy": 0.95}, "Inconclusive"),  # no requests: 0/0
    ({"errorRate": 0.2, "accuracy": None}, "Fail"),  # a measured failure is evidence enough
])
def test_analysis_verdicts(measured, verdict):
    measurements = [MetricMeasurement(name=n, value=v, threshold=0) for n, v in measured.items()]
    result = analyse([ERROR_RATE, ACCURACY], measurements, now=T0, step=1)
    assert result.verdict == verdict
    assert (result.time, result.step) == (T0, 1)
    assert [m.name for m in result.measurements] == ["errorRate", "accuracy"]
    assert {m.name: m.threshold for m in result.measurements} == {"errorRate": 0.05, "accuracy": 0.9}


def test_analysis_without_measurements_is_inconclusive():
    result = analyse([ERROR_RATE], None, now=T0, step=0)
    assert result.verdict == "Inconclusive"
    assert [(m.name, m.value, m.passed) for m in result.measurements] == [("errorRate", None, None)]
    assert "could not be measured" in result.message
    assert analyse([], [], now=T0, step=0).verdict == "Inconclusive"


@pytest.mark.parametrize(("value", "passed", "verdict"), [
    (0.01, None, "Pass"), (0.2, None, "Fail"), (0.2, True, "Pass"), (0.01, False, "Fail"),
])
def test_default_metrics_use_their_own_threshold_and_verdict(value, passed, verdict):
    """With no metrics in the spec the handler measures its defaults; their threshold and verdict come with them."""
    measured = [MetricMeasurement(name="error-rate", value=value, threshold=0.05, passed=passed)]
    assert analyse([], measured, now=T0, step=0).verdict == verdict


# --- the spec changing under a rollout ---------------------------------------------------------------------------


def test_third_version_supersedes_the_rollout():
    status = make_status(rollout=rolling(step=1, failures=1, runs=[run(30, "Fail")]))
    decision = decide(make_spec(canary()), status, observe(90, desired="v3", ready=("v1", "v2")))
    assert (decision.action, decision.reason) == (Action.SUPERSEDE, Reason.SUPERSEDED)
    entry = decision.history_entry
    assert (entry.version, entry.outcome, entry.time) == ("v2", "Superseded", at(90))
    assert decision.candidate_version == "v3"
    assert decision.rollout == Rollout(candidate_version="v3", started_at=at(90))  # fresh: no failures carried
    assert weights(decision) == {"v1": 100, "v3": 0}
    assert "v2" in decision.message and "v3" in decision.message


def test_supersede_with_a_ready_new_version_begins_its_first_step():
    decision = decide(make_spec(canary()), make_status(rollout=rolling(step=1)),
                      observe(90, desired="v3", ready=("v1", "v2", "v3")))
    assert decision.action is Action.SUPERSEDE
    assert weights(decision) == {"v1": 90, "v3": 10}


def test_supersede_to_a_rejected_version_ends_the_rollout_only():
    history = [HistoryEntry(time=at(-600), version="v3", outcome="RolledBack", reason="errorRate 0.3")]
    decision = decide(make_spec(canary()), make_status(rollout=rolling(), history=history),
                      observe(90, desired="v3", ready=("v1", "v2", "v3")))
    assert decision.action is Action.SUPERSEDE
    assert decision.rollout is None and decision.candidate_version is None
    assert weights(decision) == {"v1": 100}
    assert "not rolled out again" in decision.message


def test_pinning_the_stable_version_aborts():
    decision = decide(make_spec(canary()), make_status(rollout=rolling(step=1)), observe(90, desired="v1"))
    assert (decision.action, decision.reason) == (Action.ABORT, Reason.ABORTED)
    assert weights(decision) == {"v1": 100}
    assert decision.rollout is None and decision.candidate_version is None
    entry = decision.history_entry
    assert (entry.version, entry.outcome) == ("v2", "Superseded")  # not a rejection: v2 may be pinned again
    assert "aborted" in entry.reason


# --- a rejected version stays rejected ---------------------------------------------------------------------------


@pytest.mark.parametrize(("outcomes", "starts"), [
    (["RolledBack"], False),
    (["Superseded"], True),
    (["Promoted"], True),  # pinning back an old stable version is a rollout like any other
    (["RolledBack", "Superseded"], True),  # only the latest outcome of the version counts
    (["Superseded", "RolledBack"], False),
])
def test_rolled_back_version_is_not_retried(outcomes, starts):
    history = [HistoryEntry(time=at(i), version="v2", outcome=o, reason="why") for i, o in enumerate(outcomes)]
    history.insert(1, HistoryEntry(time=at(0.5), version="v0", outcome="Promoted"))
    decision = decide(make_spec(canary()), make_status(history=history), observe(60))
    if starts:
        assert decision.action is Action.START
    else:
        assert (decision.action, decision.reason) == (Action.NOTHING, Reason.CANDIDATE_REJECTED)
        assert weights(decision) == {"v1": 100}
        assert decision.rollout is None and decision.requeue_after is None
        assert "rolled back" in decision.message and "v2" in decision.message


def test_a_newer_version_after_a_rejection_is_rolled_out():
    history = [HistoryEntry(time=T0, version="v2", outcome="RolledBack")]
    decision = decide(make_spec(canary()), make_status(history=history), observe(60, desired="v3", ready=("v1",)))
    assert decision.action is Action.START and decision.candidate_version == "v3"


# --- shadow ------------------------------------------------------------------------------------------------------


def test_shadow_mirrors_to_the_candidate_without_weight():
    decision = decide(make_spec(shadow(percent=25)), make_status(), observe())
    assert decision.action is Action.START
    assert [(t.version, t.weight, t.shadow_percent) for t in decision.traffic] == [("v1", 100, 0), ("v2", 0, 25)]
    assert decision.requeue_after == 600
    assert traffic_summary(decision.traffic) == "v1=100 v2=0+25%shadow"


def test_shadow_holds_until_its_duration_is_over():
    stats = ShadowStats(samples=5000, agreement=1.0, latency_ratio=1.0)
    decision = decide(make_spec(shadow()), make_status(rollout=rolling()), observe(300, shadow_stats=stats))
    assert (decision.action, decision.reason) == (Action.HOLD, Reason.SHADOW_COMPARING)
    assert decision.requeue_after == 300
    assert "5000 samples" in decision.message


@pytest.mark.parametrize("stats", [
    None, ShadowStats(samples=99, agreement=1.0, latency_ratio=1.0),
    ShadowStats(samples=500, agreement=float("nan"), latency_ratio=1.0),
])
def test_shadow_without_enough_samples_keeps_waiting(stats):
    decision = decide(make_spec(shadow()), make_status(rollout=rolling()), observe(3600, shadow_stats=stats))
    assert (decision.action, decision.reason) == (Action.HOLD, Reason.SHADOW_NOT_ENOUGH_SAMPLES)
    assert decision.requeue_after == SAMPLE_POLL_SECONDS
    assert decision.history_entry is None
    assert [t.shadow_percent for t in decision.traffic] == [0, 10]


def test_shadow_promotes_on_agreement_and_latency():
    stats = ShadowStats(samples=100, agreement=0.95, latency_ratio=1.5)  # both exactly at their limits
    decision = decide(make_spec(shadow()), make_status(rollout=rolling()), observe(600, shadow_stats=stats))
    assert decision.action is Action.PROMOTE
    assert weights(decision) == {"v2": 100} and decision.stable_version == "v2"
    assert decision.analysis_run.verdict == "Pass"
    assert decision.history_entry.outcome == "Promoted"


@pytest.mark.parametrize(("agreement", "latency_ratio", "words"), [
    (0.90, 1.0, "agreement 0.9 < 0.95"),
    (0.99, 2.0, "p99 latency ratio 2 > 1.5"),
])
def test_shadow_fails_on_disagreement_or_latency(agreement, latency_ratio, words):
    stats = ShadowStats(samples=400, agreement=agreement, latency_ratio=latency_ratio)
    decision = decide(make_spec(shadow()), make_status(rollout=rolling()), observe(600, shadow_stats=stats))
    assert (decision.action, decision.reason) == (Action.ROLL_BACK, Reason.SHADOW_FAILED)
    assert weights(decision) == {"v1": 100}
    assert words in decision.message and "400 samples" in decision.message
    assert decision.history_entry.outcome == "RolledBack"
    assert decision.analysis_run.verdict == "Fail"


def test_shadow_report_only_ends_without_promotion_and_is_not_repeated():
    spec = make_spec(shadow(onSuccess="Report"))
    stats = ShadowStats(samples=400, agreement=0.99, latency_ratio=1.1)
    status = make_status(rollout=rolling())
    decision = decide(spec, status, observe(600, shadow_stats=stats))
    assert (decision.action, decision.reason) == (Action.REPORT, Reason.SHADOW_REPORTED)
    assert decision.stable_version == "v1" and decision.candidate_version is None and decision.rollout is None
    assert weights(decision) == {"v1": 100}
    assert decision.analysis_run.verdict == "Pass"
    assert decision.history_entry.outcome == "RolledBack" and "report only" in decision.history_entry.reason
    again = decide(spec, apply_decision(status, decision), observe(900, shadow_stats=stats))
    assert again.reason is Reason.CANDIDATE_REJECTED  # shadowed once, not in a loop


# --- blue-green --------------------------------------------------------------------------------------------------


def test_blue_green_previews_at_zero_then_switches_at_once():
    spec = make_spec(blue_green(preview="5m"))
    decisions, status = drive(spec, make_status(), [0, 60, 120, 299, 300, 301])
    assert [d.action for d in decisions] == [
        Action.START, Action.ANALYSE, Action.ANALYSE, Action.ANALYSE, Action.PROMOTE, Action.NOTHING,
    ]
    assert all(weights(d) == {"v1": 100, "v2": 0} for d in decisions[:4])
    assert weights(decisions[4]) == {"v2": 100}
    assert status.stable_version == "v2"


def test_blue_green_failures_roll_back():
    spec = make_spec(blue_green(failure_limit=2))
    decisions, status = drive(spec, make_status(), [0, 60, 120], measurements=failing())
    assert [d.action for d in decisions] == [Action.START, Action.ANALYSE, Action.ROLL_BACK]
    assert "blue-green preview" in decisions[-1].message
    assert status.stable_version == "v1" and status.rollout is None


# Recreate: tests/unit/test_rollout_strategies.py.


# --- safe to repeat, safe to kill --------------------------------------------------------------------------------

SCENARIOS = {
    "initial": (make_spec(), make_status(stable=None), observe(desired="v1")),
    "start": (make_spec(canary()), make_status(), observe()),
    "analysis pass": (make_spec(canary(steps=((10, "5m"),))), make_status(rollout=rolling()), observe(60)),
    "analysis fail": (make_spec(canary(failure_limit=5)), make_status(rollout=rolling()),
                      observe(60, measurements=failing())),
    "inconclusive": (make_spec(canary()), make_status(rollout=rolling()), observe(60, measurements=None)),
    "advance": (make_spec(canary()), make_status(rollout=rolling()), observe(60)),
    "advance, zero pause": (make_spec(canary(steps=((10, "0s"), (50, "0s"), (90, "0s")))),
                            make_status(rollout=rolling()), observe(60)),
    "promote": (make_spec(canary(steps=((10, "1m"),))), make_status(rollout=rolling()), observe(60)),
    "roll back": (make_spec(canary(failure_limit=1)), make_status(rollout=rolling()),
                  observe(60, measurements=failing())),
    "supersede": (make_spec(canary()), make_status(rollout=rolling()), observe(60, desired="v3",
                                                                              ready=("v1", "v2", "v3"))),
    "abort": (make_spec(canary()), make_status(rollout=rolling()), observe(60, desired="v1")),
    "shadow promote": (make_spec(shadow()), make_status(rollout=rolling()),
                       observe(600, shadow_stats=ShadowStats(samples=500, agreement=1.0, latency_ratio=1.0))),
}


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_repeating_a_decision_at_the_same_moment_changes_nothing(scenario):
    """The operator may be killed after writing status and run again at once: nothing advances or counts twice."""
    spec, status, obs = scenario
    first = decide(spec, status, obs)
    written = apply_decision(status, first)
    second = decide(spec, written, obs)
    assert second.history_entry is None and second.analysis_run is None
    assert second.action in (Action.NOTHING, Action.HOLD, Action.WAIT_READY)
    assert apply_decision(written, second) == written


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_decide_is_deterministic_and_leaves_its_inputs_alone(scenario):
    spec, status, obs = scenario
    before = status.model_dump()
    assert decide(spec, status, obs) == decide(spec, status, obs)
    assert status.model_dump() == before


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_traffic_weights_sum_to_100_and_requeue_is_bounded(scenario):
    decision = decide(*scenario)
    if decision.traffic:
        assert sum(t.weight for t in decision.traffic) == 100
    assert decision.requeue_after is None or decision.requeue_after >= MIN_REQUEUE_SECONDS
    assert decision.reason[0].isupper() and " " not in decision.reason
    assert decision.message.endswith(".")


def test_requeue_never_below_the_minimum():
    spec = make_spec(canary(steps=((10, "1m"), (50, "1m")), interval="1m"))
    decision = decide(spec, make_status(rollout=rolling(runs=[run(59.9, "Fail")], failures=1)), observe(59.95))
    assert decision.requeue_after == MIN_REQUEUE_SECONDS


def test_observation_needs_an_aware_clock():
    with pytest.raises(ValueError, match="timezone-aware"):
        Observation(now=datetime(2025, 1, 1), desired_version="v1", ready_versions=frozenset(),
                    existing_versions=frozenset(), measurements=None)


def test_apply_decision_bounds_history_and_summarises_traffic():
    history = [HistoryEntry(time=at(i), version=f"v{i}", outcome="Superseded") for i in range(HISTORY_LIMIT)]
    status = make_status(rollout=rolling(), history=history)
    decision = decide(make_spec(canary()), status, observe(60, desired="v1"))
    written = apply_decision(status, decision)
    assert len(written.history) == HISTORY_LIMIT
    assert written.history[-1] == decision.history_entry and written.history[0].version == "v1"
    assert (written.traffic_summary, written.candidate_version, written.rollout) == ("v1=100", None, None)
    assert ModelDeploymentStatus.model_validate(written.model_dump(by_alias=True, mode="json")) == written

"""Recreate (never two versions at once) and a blue-green preview nobody sends traffic to, in the rollout machine."""

from __future__ import annotations

import pytest

from mlcycle_operator.api.modeldeployment import MetricMeasurement
from mlcycle_operator.rollout import (
    READY_POLL_SECONDS,
    Action,
    Decision,
    Reason,
    apply_decision,
    decide,
)
from tests.unit.test_rollout import (
    ERROR_RATE,
    blue_green,
    failing,
    healthy,
    make_spec,
    make_status,
    observe,
    rolling,
    weights,
)

RECREATE = {"type": "Recreate"}
ENDPOINT = "http://churn.team-a.svc"


def unmeasured() -> list[MetricMeasurement]:
    """What the handler measures for a version with no requests: every query came back empty."""
    return [MetricMeasurement(name=ERROR_RATE.name, threshold=ERROR_RATE.threshold)]


# --- Recreate ----------------------------------------------------------------------------------------------------


def test_recreate_removes_the_stable_servers_first():
    decision = decide(make_spec(RECREATE), make_status(), observe(ready=("v1",), existing=("v1",)))
    assert decision.action is Action.START and decision.candidate_version == "v2"
    assert decision.versions_to_run() == []
    assert "removing the servers of v1 before those of v2 are created" in decision.message
    # Status still names v1 as stable (nothing is promoted yet); all weight waits on v2.
    assert decision.stable_version == "v1" and weights(decision) == {"v1": 0, "v2": 100}
    again = decide(make_spec(RECREATE), apply_decision(make_status(), decision),
                   observe(5, ready=("v1",), existing=("v1",)))
    assert (again.action, again.reason, again.versions_to_run()) == (Action.WAIT_READY, Reason.REMOVING_STABLE, [])
    assert again.requeue_after == READY_POLL_SECONDS


def test_recreate_creates_the_candidate_once_the_stable_servers_are_gone():
    status = make_status(rollout=rolling(step_started=None))
    decision = decide(make_spec(RECREATE), status, observe(10, ready=(), existing=()))
    assert (decision.action, decision.reason) == (Action.WAIT_READY, Reason.CANDIDATE_NOT_READY)
    assert decision.versions_to_run() == ["v2"] and "servers of v1 are gone" in decision.message


def test_recreate_promotes_a_ready_candidate_without_analysis():
    status = make_status(rollout=rolling(step_started=None))
    decision = decide(make_spec(RECREATE), status, observe(20, ready=("v2",), measurements=failing()))
    assert decision.action is Action.PROMOTE and decision.analysis_run is None
    assert decision.stable_version == "v2" and weights(decision) == {"v2": 100}
    assert decision.versions_to_run() == ["v2"]
    assert "removed the servers of v1 before creating those of v2" in decision.history_entry.reason


def test_recreate_keeps_a_candidate_that_already_runs():
    # A canary switched to Recreate midway: v2 runs beside v1; only v1 goes.
    decision = decide(make_spec(RECREATE), make_status(rollout=rolling()), observe(30))
    assert decision.reason is Reason.REMOVING_STABLE and decision.versions_to_run() == ["v2"]


def test_recreate_supersede_never_runs_two_versions():
    decision = decide(make_spec(RECREATE), make_status(rollout=rolling(step_started=None)),
                      observe(30, desired="v3", ready=("v1",), existing=("v1", "v2")))
    assert decision.action is Action.SUPERSEDE and decision.candidate_version == "v3"
    assert decision.versions_to_run() == []


def test_recreate_supersede_by_a_ready_version_keeps_the_stable_servers_away():
    spec, status = make_spec(RECREATE), make_status(rollout=rolling(step_started=None))
    obs = observe(90, desired="v3", ready=("v3",), existing=("v2", "v3"))
    first = decide(spec, status, obs)
    assert first.action is Action.SUPERSEDE and first.versions_to_run() == ["v3"]
    second = decide(spec, apply_decision(status, first), obs)
    assert second.action is Action.PROMOTE and second.stable_version == "v3"


def test_recreate_abort_removes_the_candidate_before_the_stable_version_returns():
    spec, status = make_spec(RECREATE), make_status(rollout=rolling(step_started=None))
    aborted = decide(spec, status, observe(30, desired="v1", ready=(), existing=("v2",)))
    assert aborted.action is Action.ABORT and aborted.versions_to_run() == []
    after = decide(spec, apply_decision(status, aborted), observe(35, desired="v1", ready=(), existing=()))
    assert after.versions_to_run() == ["v1"] and weights(after) == {"v1": 100}


def test_other_strategies_run_stable_and_candidate_side_by_side():
    decision = decide(make_spec(blue_green()), make_status(), observe())
    assert decision.servers is None and decision.versions_to_run() == ["v1", "v2"]


def test_recreate_driven_like_the_handler_never_has_both_versions():
    """The handler creates the servers a decision asks for, then removes the others; a server becomes ready a
    call after it was created. At no moment may v1 and v2 both exist."""
    spec, status = make_spec(RECREATE), make_status()
    existing, ready, seen = {"v1"}, {"v1"}, []
    for moment in range(0, 60, 5):
        decision = decide(spec, status, observe(moment, ready=tuple(ready), existing=tuple(existing)))
        status = apply_decision(status, decision)
        wanted = set(decision.versions_to_run())
        seen.append(existing | wanted)  # the instant between creating the wanted and removing the rest
        ready = {v for v in ready | existing if v in wanted}  # created on an earlier call: ready now
        existing = wanted
    assert not any({"v1", "v2"} <= moment for moment in seen), seen
    assert status.stable_version == "v2" and status.rollout is None
    assert status.history[-1].outcome == "Promoted"


# --- a blue-green preview with no traffic ------------------------------------------------------------------------


def preview_driven(moments, measurements, endpoint: str | None = ENDPOINT):
    spec = make_spec(blue_green(preview="5m", interval="1m"))
    status = make_status().model_copy(update={"endpoint": endpoint})
    decisions = []
    for moment in moments:
        decision = decide(spec, status, observe(moment, measurements=measurements(moment)))
        status = apply_decision(status, decision)
        decisions.append(decision)
    return decisions, status


def test_a_preview_nobody_sends_traffic_to_says_so_once_and_keeps_holding():
    decisions, status = preview_driven([0, 60, 120, 180, 240, 300, 330, 360, 420], lambda _: unmeasured())
    # Before the preview is over, nothing is unusual: runs are Inconclusive while it lasts.
    assert {d.reason for d in decisions[1:5]} == {Reason.ANALYSIS_INCONCLUSIVE}
    # The first run after previewDuration finds nothing either: one Stall, a Warning Event.
    stall = decisions[5]
    assert (stall.action, stall.reason, stall.event_type) == (Action.STALL, Reason.PREVIEW_WITHOUT_TRAFFIC, "Warning")
    assert stall.analysis_run is not None and stall.analysis_run.verdict == "Inconclusive"
    for words in ("received no traffic", ENDPOINT, "x-mlcycle-variant: v2", "v1 keeps all traffic"):
        assert words in stall.message
    # Then it holds quietly, with the same reason for the Progressing condition, and never promotes.
    assert [d.action for d in decisions[6:]] == [Action.HOLD, Action.ANALYSE, Action.ANALYSE]
    assert all(d.reason is Reason.PREVIEW_WITHOUT_TRAFFIC and d.event_type is None for d in decisions[6:])
    assert [d.action for d in decisions].count(Action.STALL) == 1
    assert all(weights(d) == {"v1": 100, "v2": 0} for d in decisions)
    assert status.stable_version == "v1" and status.rollout.candidate_version == "v2"


def test_a_preview_that_gets_traffic_later_is_promoted_as_usual():
    decisions, status = preview_driven([0, 60, 300, 360, 420], lambda t: unmeasured() if t < 400 else healthy())
    assert [d.action for d in decisions] == [Action.START, Action.ANALYSE, Action.STALL, Action.ANALYSE,
                                             Action.PROMOTE]
    assert status.stable_version == "v2" and status.history[-1].outcome == "Promoted"


def test_the_preview_message_points_at_status_endpoint_when_unknown():
    decisions, _ = preview_driven([0, 300], lambda _: unmeasured(), endpoint=None)
    assert "status.endpoint" in decisions[-1].message and decisions[-1].message.endswith(".")


@pytest.mark.parametrize("measurements", [
    None,  # Prometheus unreachable: its own message, not "no traffic"
    [MetricMeasurement(name="errorRate", value=0.01, threshold=0.05),
     MetricMeasurement(name="accuracy", threshold=0.9)],  # traffic came, one custom query came back empty
], ids=["unreachable", "partly measured"])
def test_only_a_preview_with_no_values_at_all_is_called_unvisited(measurements):
    decisions, _ = preview_driven([0, 300, 330], lambda _: measurements)
    assert all(d.reason is not Reason.PREVIEW_WITHOUT_TRAFFIC and d.action is not Action.STALL for d in decisions)


def test_a_canary_without_traffic_is_not_a_preview():
    spec = make_spec({"type": "Canary", "canary": {"steps": [{"weight": 10, "pause": "1m"}],
                                                   "analysis": {"interval": "1m"}}})
    decision = decide(spec, make_status(rollout=rolling()), observe(120, measurements=unmeasured()))
    assert decision.reason is Reason.ANALYSIS_INCONCLUSIVE


def test_a_stall_is_not_repeated_when_the_same_moment_is_decided_again():
    """The operator may be killed after writing status: the same call again records nothing and warns no more."""
    spec = make_spec(blue_green(preview="5m", interval="1m"))
    status = make_status(rollout=rolling(runs=[]))
    first = decide(spec, status, observe(300, measurements=unmeasured()))
    assert first.action is Action.STALL
    written = apply_decision(status, first)
    second = decide(spec, written, observe(300, measurements=unmeasured()))
    assert second.action is Action.HOLD and second.analysis_run is None and second.event_type is None
    assert apply_decision(written, second) == written


# --- which decisions deserve an Event ----------------------------------------------------------------------------


@pytest.mark.parametrize(("state", "obs", "event"), [
    (make_status(), observe(ready=("v1",)), "Normal"),  # a rollout starts
    (make_status(rollout=rolling()), observe(30), None),  # holding
    (make_status(rollout=rolling(failures=1)), observe(60, measurements=failing()), "Warning"),  # rolled back
], ids=["start", "hold", "roll back"])
def test_event_type(state, obs, event):
    decision: Decision = decide(make_spec(blue_green(failure_limit=2)), state, obs)
    assert decision.event_type == event

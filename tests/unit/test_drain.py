"""A version that leaves the routing table keeps its server for spec.strategy.scaleDownDelay (the router switches
tables a moment after status changes), except under Recreate; the status lists it as retiring meanwhile."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mlcycle_operator import rollout
from mlcycle_operator.api.modeldeployment import HistoryEntry, ModelDeploymentSpec, ModelDeploymentStatus
from mlcycle_operator.handlers.modeldeployment import RETIRE_ORDER, _drained, _rolling_out, retiring_versions

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def spec(strategy: dict | None = None) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate({"project": "churn", "model": {"name": "churn", "track": {}},
                                               "strategy": strategy or {}})


def ended_at(seconds: float) -> ModelDeploymentStatus:
    entry = HistoryEntry(time=T0 + timedelta(seconds=seconds), version="v2", outcome="Promoted")
    return ModelDeploymentStatus(stable_version="v2", history=[entry])


def decision(ends_rollout: bool) -> rollout.Decision:
    entry = HistoryEntry(time=T0, version="v2", outcome="Promoted") if ends_rollout else None
    return rollout.Decision(rollout.Action.NOTHING, rollout.Reason.ROLLED_BACK, "", "v2", None, history_entry=entry)


def test_the_default_delay_is_thirty_seconds():
    assert spec().strategy.scale_down_delay == "30s"


@pytest.mark.parametrize(("elapsed", "drained"), [(0, False), (29.9, False), (30, True), (600, True)])
def test_a_version_is_kept_until_the_delay_has_passed_since_the_rollout_ended(elapsed, drained):
    now = T0 + timedelta(seconds=elapsed)
    assert _drained(spec(), ended_at(0), decision(False), now) is drained


def test_the_decision_that_ends_a_rollout_keeps_the_version_that_left():
    assert _drained(spec(), ended_at(-3600), decision(True), T0) is False


def test_a_zero_delay_removes_at_once():
    assert _drained(spec({"scaleDownDelay": "0s"}), ended_at(-1), decision(True), T0) is True


def test_recreate_takes_the_old_version_down_first():
    assert _drained(spec({"type": "Recreate"}), ended_at(0), decision(True), T0) is True


def test_a_version_that_left_without_a_rollout_is_removed():
    assert _drained(spec(), ModelDeploymentStatus(stable_version="v2"), decision(False), T0) is True


@pytest.mark.parametrize(("status", "timer"), [
    ({}, False), ({"rollout": {"candidateVersion": "v3"}}, True), ({"retiring": ["v1"]}, True),
    ({"retiring": []}, False)])
def test_the_fast_timer_runs_while_rolling_out_or_draining(status, timer):
    assert _rolling_out(status) is timer


@pytest.mark.parametrize(("existing", "stored", "serve", "retiring"), [
    ({"v1", "v2"}, [], ["v2"], ["v1"]),  # promoted over: v1's Deployment is still there
    ({"v2"}, ["v3"], ["v2"], ["v3"]),  # killed after deleting v3's Deployment: status still says v3 leaves
    ({"v2"}, [], ["v2"], []),
    ({"v2", "v3"}, ["v3"], ["v2", "v3"], []),  # v3 is served again: it does not leave
])
def test_a_version_leaves_while_its_deployment_exists_or_status_says_it_leaves(existing, stored, serve, retiring):
    assert retiring_versions(existing, stored, serve) == retiring


def test_a_retiring_versions_deployment_is_deleted_last():
    # A kill halfway through leaves the Deployment, from which the next operator sees the version is still there.
    assert RETIRE_ORDER[-1] == ("apps/v1", "Deployment")
    assert {kind for _, kind in RETIRE_ORDER} == {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler",
                                                  "PodDisruptionBudget"}

"""set_condition: one condition per type, and lastTransitionTime moves only when the status does."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest

from mlcycle_operator import conditions as cond

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def ready(status: str = "True", reason: str = cond.Reason.RECONCILED, at: str = "2025-03-01T11:00:00Z") -> dict:
    return {"type": cond.READY, "status": status, "reason": reason, "message": "", "lastTransitionTime": at,
            "observedGeneration": 1}


def test_adds_a_condition_to_an_empty_list():
    result = cond.set_condition([], cond.READY, True, cond.Reason.RECONCILED, "all children applied", 3, at=T0)
    assert result == [{
        "type": cond.READY, "status": "True", "reason": cond.Reason.RECONCILED, "message": "all children applied",
        "lastTransitionTime": "2025-03-01T12:00:00Z", "observedGeneration": 3,
    }]


def test_appends_a_new_type_after_the_existing_ones():
    existing = [ready()]
    result = cond.set_condition(existing, cond.DEGRADED, False, "Recovered", "", 1, at=T0)
    assert [c["type"] for c in result] == [cond.READY, cond.DEGRADED]
    assert result[0] == ready()


@pytest.mark.parametrize(("status", "text"), [(True, "True"), (False, "False"), ("Unknown", "Unknown")])
def test_status_is_written_as_the_kubernetes_string(status, text):
    assert cond.set_condition([], cond.READY, status, "R", "", 1, at=T0)[0]["status"] == text


def test_replaces_the_condition_of_the_same_type_in_place():
    existing = [ready(), {"type": cond.PROGRESSING, "status": "True", "reason": "Training", "message": "",
                          "lastTransitionTime": "2025-03-01T11:00:00Z", "observedGeneration": 1}]
    result = cond.set_condition(existing, cond.READY, False, cond.Reason.PROJECT_NOT_FOUND, "MLProject churn is gone",
                                2, at=T1)
    assert len(result) == 2
    assert [c["type"] for c in result] == [cond.READY, cond.PROGRESSING]
    assert result[0]["status"] == "False"
    assert result[0]["reason"] == cond.Reason.PROJECT_NOT_FOUND
    assert result[0]["message"] == "MLProject churn is gone"
    assert result[0]["observedGeneration"] == 2
    assert result[1] == existing[1]


def test_keeps_last_transition_time_when_the_status_is_unchanged():
    existing = [ready(at="2025-03-01T11:00:00Z")]
    result = cond.set_condition(existing, cond.READY, True, "StillFine", "new words", 2, at=T1)
    assert result[0]["lastTransitionTime"] == "2025-03-01T11:00:00Z"
    # Everything else does follow the new call.
    assert (result[0]["reason"], result[0]["message"], result[0]["observedGeneration"]) == ("StillFine", "new words", 2)


@pytest.mark.parametrize(("before", "after"), [
    ("True", False), ("False", True), ("Unknown", True), ("True", "Unknown"),
])
def test_moves_last_transition_time_when_the_status_changes(before, after):
    existing = [ready(status=before, at="2025-03-01T11:00:00Z")]
    result = cond.set_condition(existing, cond.READY, after, "Changed", "", 1, at=T1)
    assert result[0]["lastTransitionTime"] == "2025-03-01T12:05:00Z"


def test_without_a_time_it_uses_now_in_utc_seconds():
    before = datetime.now(UTC).replace(microsecond=0)
    stamp = cond.set_condition([], cond.READY, True, "R", "", 1)[0]["lastTransitionTime"]
    after = datetime.now(UTC)
    assert stamp.endswith("Z")
    assert "." not in stamp
    assert before <= datetime.fromisoformat(stamp.replace("Z", "+00:00")) <= after


@pytest.mark.parametrize("status", [True, False])
def test_does_not_mutate_the_input_list(status):
    existing = [ready(), {"type": cond.DEGRADED, "status": "True", "reason": cond.Reason.OOM_KILLED, "message": "oom",
                          "lastTransitionTime": "2025-03-01T11:00:00Z", "observedGeneration": 1}]
    snapshot = copy.deepcopy(existing)
    replaced = cond.set_condition(existing, cond.READY, status, "Other", "changed", 5, at=T1)
    added = cond.set_condition(existing, cond.DATA_VALID, status, "Validated", "", 5, at=T1)
    assert existing == snapshot
    assert replaced is not existing
    assert added is not existing
    assert len(existing) == 2


def test_get_condition_and_is_true():
    conditions = [ready(status="True"), {"type": cond.DEGRADED, "status": "False"}]
    assert cond.get_condition(conditions, cond.READY) == conditions[0]
    assert cond.get_condition(conditions, cond.GATES_PASSED) is None
    assert cond.get_condition(None, cond.READY) is None
    assert cond.is_true(conditions, cond.READY)
    assert not cond.is_true(conditions, cond.DEGRADED)
    assert not cond.is_true(conditions, cond.GATES_PASSED)
    assert not cond.is_true(None, cond.READY)

"""A ModelDeployment at rest writes no status: the resync of a thousand idle deployments costs no writes, and
the Progressing condition keeps the words of the transition that led to rest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from mlcycle_operator import rollout
from mlcycle_operator.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus
from mlcycle_operator.handlers import _status
from mlcycle_operator.handlers.modeldeployment import ModelVersion, _status_from
from mlcycle_operator.resources.common import Meta

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SPEC = ModelDeploymentSpec.model_validate({"project": "churn", "model": {"name": "churn", "version": "v1"}})
META = Meta(name="churn", namespace="ml", generation=3)
V1 = ModelVersion("v1", "pvc://models/churn/v1")


def reconcile(old: dict, now: datetime) -> tuple[rollout.Decision, dict]:
    """What the handler does with one observation of v1 ready: decide, then compute the new status."""
    current = ModelDeploymentStatus.model_validate(old)
    observation = rollout.Observation(now=now, desired_version="v1", ready_versions=frozenset({"v1"}),
                                      existing_versions=frozenset({"v1"}), measurements=None)
    decision = rollout.decide(SPEC, current, observation)
    new = _status_from(decision, current, SPEC, META, old, V1, 1, 1, True)
    return decision, {**old, **{k: v for k, v in new.items() if v is not None}}


def progressing(status: dict) -> dict:
    return next(c for c in status["conditions"] if c["type"] == "Progressing")


def test_the_first_version_becoming_ready_is_the_last_write():
    waiting = {"observedGeneration": 3, "phase": "Pending", "conditions": []}
    first, available = reconcile(waiting, T0)
    assert first.reason is rollout.Reason.INITIAL_VERSION_AVAILABLE and available["phase"] == "Available"
    assert progressing(available)["reason"] == "InitialVersionAvailable"

    again, resynced = reconcile(available, T0 + timedelta(seconds=60))
    assert again.reason is rollout.Reason.STABLE_VERSION_SERVING and again.event_type is None
    patch = SimpleNamespace(status={})
    assert _status.write(patch, available, resynced) is False, patch.status
    assert progressing(resynced)["message"] == progressing(available)["message"]


def test_a_new_generation_at_rest_says_what_serves():
    _, available = reconcile({"observedGeneration": 3, "conditions": []}, T0)
    older = {**available, "conditions": [{**c, "observedGeneration": 2} for c in available["conditions"]]}
    _, resynced = reconcile(older, T0 + timedelta(seconds=60))
    assert progressing(resynced)["reason"] == "StableVersionServing"
    assert progressing(resynced)["message"] == "v1 serves all traffic."


def _pull_failure() -> list:
    from mlcycle_operator import diagnose

    pod = {"metadata": {"name": "churn-v1-abc"}, "spec": {"containers": [{"name": "server"}]},
           "status": {"containerStatuses": [{"name": "server", "image": "registry.example/missing:1",
                                             "state": {"waiting": {"reason": "ImagePullBackOff",
                                                                   "message": "Back-off pulling image"}}}]}}
    return diagnose.pod_problems([pod], memory_hint="raise serving.resources.memory")


def test_servers_that_cannot_start_say_why_in_ready_and_degraded():
    current = ModelDeploymentStatus.model_validate({"observedGeneration": 3, "conditions": []})
    observation = rollout.Observation(now=T0, desired_version="v1", ready_versions=frozenset(),
                                      existing_versions=frozenset({"v1"}), measurements=None)
    decision = rollout.decide(SPEC, current, observation)
    new = _status_from(decision, current, SPEC, META, {}, V1, 0, 2, True, _pull_failure())
    conditions = {c["type"]: c for c in new["conditions"]}
    assert new["phase"] == "Degraded"
    for type_ in ("Ready", "Degraded"):
        assert conditions[type_]["reason"] == "ImagePullFailed"
        assert "registry.example/missing:1" in conditions[type_]["message"]
        assert "churn-v1-abc" in conditions[type_]["message"]
    assert conditions["Degraded"]["status"] == "True" and conditions["Ready"]["status"] == "False"

    # The pods recover: the condition the pods set goes with them.
    _, available = reconcile(new, T0 + timedelta(seconds=60))
    conditions = {c["type"]: c for c in available["conditions"]}
    assert available["phase"] == "Available"
    assert conditions["Degraded"]["status"] == "False" and conditions["Ready"]["status"] == "True"


def test_an_oom_killed_server_names_its_limit_and_the_field_to_raise():
    from mlcycle_operator import diagnose

    pod = {"metadata": {"name": "churn-v1-abc"},
           "spec": {"containers": [{"name": "server", "resources": {"limits": {"memory": "256Mi"}}}]},
           "status": {"containerStatuses": [{"name": "server", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                             "lastState": {"terminated": {"reason": "OOMKilled"}}}]}}
    [problem] = diagnose.pod_problems([pod], memory_hint="raise serving.resources.memory")
    assert problem.reason == "OOMKilled"
    assert "256Mi" in problem.message and "serving.resources.memory" in problem.message

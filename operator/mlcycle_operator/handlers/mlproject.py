"""MLProject handlers: provision the project's workload identity, Feast config, materialization and storage;
keep counts and the champion in status."""

from __future__ import annotations

from typing import Any

import kopf

from .. import conditions as cond
from .. import kube, storage
from ..api.common import GROUP, VERSION
from ..api.mlproject import MLProjectSpec
from ..diagnose import Problem
from ..metrics import reconciling
from ..resources import project as builders
from ..resources.common import LABEL_INSTANCE, LABEL_OWNER_KIND, Meta
from ..resources.compare import Action
from . import _children, _events, _status
from ._cache import Cache

PLURAL = "mlprojects"


def runtime_image(spec: MLProjectSpec, memo: Any) -> str:
    return spec.defaults.image or memo.config.runtime_image


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def mlproject_reconcile(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch, memo: Any,
                        **kwargs: Any) -> None:
    with reconciling("MLProject"):
        project = _status.parse_spec(MLProjectSpec, spec, body, patch, status)
        meta = Meta.of(body)
        desired = builders.children(project, meta, runtime_image(project, memo))
        cache = Cache(kwargs)
        old = dict(status or {})
        claim = next((c for c in desired if c["kind"] == "PersistentVolumeClaim"), None)
        store = _storage(body, claim, old, timer=False)
        _children.apply_owned(body, [c for c in desired if c["kind"] != "PersistentVolumeClaim"], cache)
        if project.feature_store is None or not project.feature_store.materialization.enabled:
            _children.prune(body, cache, "batch/v1", "CronJob", meta.namespace,
                            {LABEL_INSTANCE: meta.name, LABEL_OWNER_KIND: "mlproject"}, keep=set())
        new = _observed(project, meta, old, cache, store)
        if _status.write(patch, status, new):
            _announce(body, old, new)


@kopf.timer(GROUP, VERSION, PLURAL, interval=30, initial_delay=5, idle=5)
def mlproject_observe(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch,
                      **kwargs: Any) -> None:
    """Level-based: the counts and the champion change when other objects change, not this one (read from the
    cache: no API reads however many objects the project has)."""
    project, meta, old = MLProjectSpec.model_validate(dict(spec)), Meta.of(body), dict(status or {})
    store = _storage(body, builders.storage_pvc(project, meta), old, timer=True)
    new = _observed(project, meta, old, Cache(kwargs), store)
    if _status.write(patch, status, new):
        _announce(body, old, new)


def _announce(body: kopf.Body, old: dict[str, Any], new: dict[str, Any]) -> None:
    """A new phase as a Normal Event; a new problem (Degraded for another reason) as a Warning naming it."""
    if old.get("phase") != new["phase"]:
        _events.normal(body, cond.Reason.RECONCILED, f"MLProject is {new['phase']}")
    degraded, before = (cond.get_condition(c.get("conditions"), cond.DEGRADED) for c in (new, old))
    if degraded is not None and (before is None or before.get("reason") != degraded["reason"]):
        _events.warning(body, degraded["reason"], degraded["message"])


def _apply_claim(body: kopf.Body, claim: dict[str, Any], existing: dict[str, Any] | None) -> dict[str, Any]:
    """Create the model store's claim when it is missing (`existing` None); return the claim as it now stands.
    Not owned: deleting an MLProject must never delete its models. A claim that exists takes only what a claim
    can take (labels, a larger size where its class allows expansion); any other difference is said in status
    (storage.observe_claim) and never sent, since the API server would refuse it (422) on every retry."""
    meta = claim["metadata"]
    if existing is not None and storage.claim_changes(claim, existing):
        return existing
    try:
        action = kube.apply(claim, existing)
    except kube.ApiException as err:
        if existing is None or err.status not in (403, 422):
            raise
        _events.warning(body, cond.Reason.STORAGE_RESIZE_REFUSED,
                        f"claim {meta['name']} was not changed: {kube.refusal(err)}")
        return existing
    if action is not Action.UNCHANGED:
        verb = "Created" if action is Action.CREATE else "Updated"
        _events.normal(body, cond.Reason.CHILDREN_APPLIED, f"{verb} PersistentVolumeClaim/{meta['name']}")
    # A claim just created is Pending, with no Events yet: what was sent says as much as a read would.
    return claim if existing is None else existing


def _storage(body: kopf.Body, claim: dict[str, Any] | None, old: dict[str, Any],
             timer: bool) -> tuple[dict[str, Any] | None, list[Problem]]:
    """The claim read once (and its Events while it is not Bound), applied, and turned into status and problems.
    A reconcile applies it as the spec says; the timer only makes a missing one again (a person deleted it to
    change what a claim cannot change, as status told them), and reads nothing once it is Bound and well, so
    settled projects cost no reads."""
    if claim is None:
        return None, []
    previous = old.get("storage")
    if (timer and previous and previous.get("phase") == "Bound"
            and not cond.is_true(old.get("conditions"), cond.DEGRADED)):
        return previous, []
    name, namespace = claim["metadata"]["name"], claim["metadata"]["namespace"]
    existing = kube.get("v1", "PersistentVolumeClaim", namespace, name)
    if existing is None or not timer:
        existing = _apply_claim(body, claim, existing)
    events: list[dict[str, Any]] = []
    uid = existing["metadata"].get("uid")
    if uid and (existing.get("status") or {}).get("phase") != "Bound":
        selector = f"involvedObject.kind=PersistentVolumeClaim,involvedObject.name={name}"
        events = [e for e in kube.list_objects("v1", "Event", namespace, field_selector=selector)
                  if (e.get("involvedObject") or {}).get("uid") in (None, uid)]  # not a deleted claim's
    return storage.observe_claim(claim, existing, events)


def _observed(project: MLProjectSpec, meta: Meta, old: dict[str, Any], cache: Cache,
              store: tuple[dict[str, Any] | None, list[Problem]]) -> dict[str, Any]:
    def mine(kind: str) -> list[dict[str, Any]]:
        return cache.members(kind, meta.namespace, meta.name)

    jobs, deployments, monitors = mine("TrainingJob"), mine("ModelDeployment"), mine("DriftMonitor")
    running = [j for j in jobs if j.get("phase") not in ("Succeeded", "Failed")]
    claim, problems = store
    unbound = [p for p in problems if p.reason == cond.Reason.STORAGE_NOT_BOUND]
    conditions = list(old.get("conditions", []))
    if unbound:
        conditions = cond.set_condition(conditions, cond.READY, False, cond.Reason.STORAGE_NOT_BOUND,
                                        unbound[0].message, meta.generation)
    else:
        conditions = cond.set_condition(conditions, cond.READY, True, cond.Reason.RECONCILED,
                                        "Workload identity, feature store config and storage are provisioned.",
                                        meta.generation)
    if problems:
        conditions = cond.set_condition(conditions, cond.DEGRADED, True, problems[0].reason,
                                        "; ".join(p.message for p in problems), meta.generation)
    else:
        conditions = [c for c in conditions if c["type"] != cond.DEGRADED]
    observed = {
        "observedGeneration": meta.generation,
        "phase": "Degraded" if problems else "Ready",
        "conditions": conditions,
        "serviceAccount": builders.workload_service_account_name(meta.name),
        "counts": {
            "trainingJobs": len(jobs),
            "runningTrainingJobs": len(running),
            "modelDeployments": len(deployments),
            "driftMonitors": len(monitors),
        },
        "champion": _champion(deployments, jobs),
    }
    if claim is not None:
        observed["storage"] = claim
    return observed


def _champion(deployments: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The stable model of the project's oldest serving deployment: what new models must beat (`deployments`
    are the cache's summaries)."""
    serving = sorted((d for d in deployments if d.get("stableVersion")), key=lambda d: (d["created"], d["name"]))
    if not serving:
        return None
    first = serving[0]
    champion = {"model": first["modelName"], "version": first["stableVersion"]}
    if first.get("modelUri"):
        champion["uri"] = first["modelUri"]
    if first.get("trainingJob"):
        champion["trainingJob"] = first["trainingJob"]
    return champion

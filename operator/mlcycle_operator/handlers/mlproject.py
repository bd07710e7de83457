"""MLProject handlers: provision the project's workload identity, Feast config, materialization and storage;
keep counts and the champion in status."""

from __future__ import annotations

from typing import Any

import kopf

from .. import conditions as cond
from ..api.common import GROUP, VERSION
from ..api.mlproject import MLProjectSpec
from ..metrics import reconciling
from ..resources import project as builders
from ..resources.common import LABEL_INSTANCE, LABEL_OWNER_KIND, Meta
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
        # The model store outlives the project: deleting an MLProject must never delete its models.
        pvc = [c for c in desired if c["kind"] == "PersistentVolumeClaim"]
        cache = Cache(kwargs)
        _children.apply_owned(body, pvc, cache, owned=False)
        _children.apply_owned(body, [c for c in desired if c["kind"] != "PersistentVolumeClaim"], cache)
        if project.feature_store is None or not project.feature_store.materialization.enabled:
            _children.prune(body, cache, "batch/v1", "CronJob", meta.namespace,
                            {LABEL_INSTANCE: meta.name, LABEL_OWNER_KIND: "mlproject"}, keep=set())
        new = _observed(project, meta, dict(status or {}), cache)
        if _status.write(patch, status, new) and (status or {}).get("phase") != new["phase"]:
            _events.normal(body, cond.RECONCILED, f"MLProject is {new['phase']}")


@kopf.timer(GROUP, VERSION, PLURAL, interval=30, initial_delay=5, idle=5)
def mlproject_observe(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch,
                      **kwargs: Any) -> None:
    """Level-based: the counts and the champion change when other objects change, not this one (read from the
    cache: no API reads however many objects the project has)."""
    project = MLProjectSpec.model_validate(dict(spec))
    _status.write(patch, status, _observed(project, Meta.of(body), dict(status or {}), Cache(kwargs)))


def _observed(project: MLProjectSpec, meta: Meta, old: dict[str, Any], cache: Cache) -> dict[str, Any]:
    def mine(kind: str) -> list[dict[str, Any]]:
        return cache.members(kind, meta.namespace, meta.name)

    jobs, deployments, monitors = mine("TrainingJob"), mine("ModelDeployment"), mine("DriftMonitor")
    running = [j for j in jobs if j.get("phase") not in ("Succeeded", "Failed")]
    conditions = cond.set_condition(list(old.get("conditions", [])), cond.READY, True, cond.RECONCILED,
                                    "Workload identity, feature store config and storage are provisioned.",
                                    meta.generation)
    conditions = [c for c in conditions if c["type"] != cond.DEGRADED]
    return {
        "observedGeneration": meta.generation,
        "phase": "Ready",
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

"""TrainingJob handlers: start the workload (RayJob or batch Job), then follow it and the trainer's report."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from .. import conditions as cond
from .. import diagnose, kube
from ..api.common import API_VERSION, GROUP, VERSION
from ..api.mlproject import MLProjectSpec
from ..api.trainingjob import TrainingJobSpec
from ..metrics import reconciling
from ..resources import training as builders
from ..resources.common import Meta
from . import _children, _events, _status
from ._cache import Cache
from .mlproject import runtime_image
from .modeldeployment import NUDGE_ANNOTATION

PLURAL = "trainingjobs"


def _kuberay_installed() -> bool:
    return kube.resource_served("ray.io/v1", "rayjobs")


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
def trainingjob_start(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch, memo: Any,
                      **kwargs: Any) -> None:
    with reconciling("TrainingJob"):
        job = _status.parse_spec(TrainingJobSpec, spec, body, patch, status)
        meta = Meta.of(body)
        old = dict(status or {})
        if old.get("phase") in diagnose.TERMINAL:
            return
        cache = Cache(kwargs)
        project = _status.project_or_wait(body, patch, status, cache.project(meta.namespace, job.project),
                                          job.project, meta.namespace)
        project_spec = MLProjectSpec.model_validate(project["spec"])
        champion = (project.get("status") or {}).get("champion")
        image = job.image or runtime_image(project_spec, memo)
        config = builders.training_config(job, meta, project_spec, champion)
        kind = "RayJob" if _kuberay_installed() else "Job"
        build = builders.ray_job if kind == "RayJob" else builders.batch_job
        workload = build(job, meta, project_spec, image)
        children = [builders.config_map(job, meta, config), workload]
        if kind == "RayJob":  # before the RayJob: the head's dashboard is never open to every pod
            children.insert(1, builders.ray_network_policy(job, meta, memo.config.kuberay_namespace))
        now = cond.now().isoformat().replace("+00:00", "Z")
        try:
            _children.apply_owned(body, children, cache)
        except kube.ApiException as err:
            if err.status not in (400, 422):  # the API server is unwell or busy: Kopf tries again
                raise
            _refused(body, patch, status, meta, f"{kind} {workload['metadata']['name']}", err, now)
            return
        conditions = cond.set_condition(
            list(old.get("conditions", [])), cond.PROGRESSING, True, cond.Reason.WORKLOAD_CREATED,
            f"{kind} {workload['metadata']['name']} runs `python -m mlcycle_runtime.train`", meta.generation)
        new = {
            "observedGeneration": meta.generation,
            "phase": old.get("phase") or "Pending",
            "workload": {"kind": kind, "name": workload["metadata"]["name"]},
            "startTime": old.get("startTime") or now,
            "conditions": conditions,
            "lineage": {**(old.get("lineage") or {}), "image": image, "startTime": old.get("startTime") or now},
        }
        _status.write(patch, status, new)


def _refused(body: kopf.Body, patch: kopf.Patch, status: kopf.Status, meta: Meta, what: str, err: Exception,
             now: str) -> None:
    """The API server refused the workload (a field the installed CRD lacks, an invalid value): the job cannot
    start as specified, so it fails at once, in the API server's words, instead of being retried forever."""
    message = f"the API server refused the {what}: {kube.refusal(err)}"
    old = dict(status or {})
    conditions = cond.set_condition(list(old.get("conditions", [])), cond.PROGRESSING, False,
                                    cond.Reason.WORKLOAD_REFUSED, message, meta.generation)
    conditions = cond.set_condition(conditions, cond.DEGRADED, True, cond.Reason.WORKLOAD_REFUSED, message,
                                    meta.generation)
    _status.write(patch, status, {"observedGeneration": meta.generation, "phase": "Failed", "conditions": conditions,
                                  "completionTime": now})
    _events.warning(body, cond.Reason.WORKLOAD_REFUSED, message)


@kopf.timer(GROUP, VERSION, PLURAL, interval=5, initial_delay=2,
            when=lambda status, **_: (status or {}).get("phase") not in diagnose.TERMINAL)
def trainingjob_observe(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, **kwargs: Any) -> None:
    """Level-based: the workload's pods and the trainer's status.result decide the phase. The Job comes from the
    cache, and its pods are listed only when it has no ready pod or has failures, so a thousand running jobs
    cost no API reads."""
    _observe(body, status, patch, Cache(kwargs))


@kopf.on.field(GROUP, VERSION, PLURAL, field="status.result")
def trainingjob_result(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, **kwargs: Any) -> None:
    """React to the trainer's report at once instead of waiting for the next timer tick."""
    _observe(body, status, patch, Cache(kwargs))


def _pods_worth_reading(kind: str, job: dict[str, Any] | None) -> bool:
    """A running Job whose pods are all ready, with no failure, has nothing in its pods to diagnose."""
    if kind != "Job" or job is None:
        return True
    status = job.get("status") or {}
    return not status.get("ready") or bool(status.get("failed")) or status.get("ready", 0) < status.get("active", 0)


def _observe(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, cache: Cache) -> None:
    old = dict(status or {})
    workload = old.get("workload")
    if not workload or old.get("phase") in diagnose.TERMINAL:
        return
    with reconciling("TrainingJob"):
        meta = Meta.of(body)
        api_version = "ray.io/v1" if workload["kind"] == "RayJob" else "batch/v1"
        job = cache.read(api_version, workload["kind"], meta.namespace, workload["name"])
        if workload["kind"] == "RayJob":
            # KubeRay names the cluster <rayjob>-<suffix>; it is known once the RayJob reports it.
            ray_cluster = ((job or {}).get("status") or {}).get("rayClusterName")
            selector = f"ray.io/cluster={ray_cluster}" if ray_cluster else None
        else:
            selector = f"job-name={workload['name']}"
        reading = selector and _pods_worth_reading(workload["kind"], job)
        pods = kube.list_objects("v1", "Pod", meta.namespace, selector) if reading else []
        now = cond.now().isoformat().replace("+00:00", "Z")
        observed = diagnose.observe_training(old, job, pods, meta.generation, now)
        if not observed.status:
            return
        if old.get("phase") != observed.status["phase"]:
            observed.events.insert(0, ("Normal", cond.Reason.PHASE_CHANGED,
                                       f"{old.get('phase') or 'Pending'} -> {observed.status['phase']}"))
        lineage = {**(old.get("lineage") or {}), **(observed.status.get("lineage") or {})}
        if observed.status["phase"] in diagnose.TERMINAL:
            lineage["endTime"] = now
        observed.status["lineage"] = lineage
        _status.write(patch, status, observed.status)
        for type_, reason, message in observed.events:
            (_events.normal if type_ == "Normal" else _events.warning)(body, reason, message)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def trainingjob_finished(body: kopf.Body, event: kopf.RawEvent, memo: kopf.Memo, **kwargs: Any) -> None:
    """A gated model exists now: tell the deployments that track it. Here, once the phase is stored (the cache
    is updated before this runs), and not where the phase is decided: a deployment nudged before the patch lands
    would still read the job as running.

    A watching handler, not Kopf's on.field: that kept status.phase in the last-handled state, a write after
    every phase change of every job. A coroutine: only a nudge goes to a thread."""
    uid, status, announced = body["metadata"]["uid"], body.get("status") or {}, memo.announced_jobs
    if event.get("type") == "DELETED":
        announced.discard(uid)
        return
    if status.get("phase") != "Succeeded" or not status.get("gatesPassed") or uid in announced:
        return
    # The initial listing (type None) only learns the state: a starting operator reconciles every deployment.
    if event.get("type") is not None:
        await asyncio.to_thread(_nudge_tracking_deployments, body, status, Cache(kwargs))
    announced.add(uid)  # after the nudges: if one fails, the job's next event tries again (the resync also looks)


def _nudge_tracking_deployments(body: kopf.Body, status: dict[str, Any], cache: Cache) -> None:
    """Tell the deployments that track this model that a new gated version exists."""
    meta = Meta.of(body)
    model = body["spec"]["output"]["modelName"]
    version = (status.get("model") or {}).get("version", "")
    for md in cache.members("ModelDeployment", meta.namespace, body["spec"]["project"]):
        if md["modelName"] == model and md["tracking"]:
            kube.patch_annotations(API_VERSION, "ModelDeployment", meta.namespace, md["name"],
                                   {NUDGE_ANNOTATION: f"{meta.name}/{version}"})

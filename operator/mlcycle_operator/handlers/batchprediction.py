"""BatchPrediction handlers: resolve the model, start the run (a Job) or the schedule (a CronJob), then follow the
scorer's report and the workload into status."""

from __future__ import annotations

from typing import Any

import kopf

from .. import batchstatus, kube
from .. import conditions as cond
from ..api.batchprediction import BatchPredictionSpec
from ..api.common import GROUP, VERSION
from ..api.mlproject import MLProjectSpec
from ..metrics import reconciling
from ..resources import batch as builders
from ..resources.common import Meta
from . import _children, _events, _status
from ._cache import Cache
from .mlproject import runtime_image
from .modeldeployment import available_versions

PLURAL = "batchpredictions"
KIND = "BatchPrediction"


def _now() -> str:
    return cond.now().isoformat().replace("+00:00", "Z")


def _scheduled(spec: kopf.Spec, **_: Any) -> bool:
    return bool((spec or {}).get("schedule"))


def _one_shot_running(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    return not _scheduled(spec) and (status or {}).get("phase") not in batchstatus.TERMINAL


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
def batchprediction_start(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch, memo: Any,
                          **kwargs: Any) -> None:
    with reconciling(KIND):
        bp = _status.parse_spec(BatchPredictionSpec, spec, body, patch, status)
        old = dict(status or {})
        # A run is started once: the resolved model and the Job stay what they were.
        if bp.schedule is None and (old.get("workload") or old.get("phase") in batchstatus.TERMINAL):
            return
        _prepare(body, bp, status, patch, memo, Cache(kwargs))


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", when=_scheduled)
def batchprediction_update(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch, memo: Any,
                           **kwargs: Any) -> None:
    """A schedule may change (a one-shot spec cannot: the API server refuses it)."""
    with reconciling(KIND):
        bp = _status.parse_spec(BatchPredictionSpec, spec, body, patch, status)
        _prepare(body, bp, status, patch, memo, Cache(kwargs))


@kopf.timer(GROUP, VERSION, PLURAL, interval=30, initial_delay=5, when=_scheduled)
def batchprediction_schedule(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch, memo: Any,
                             **kwargs: Any) -> None:
    """Level-based for a schedule: a tracked model's newest gated version goes into the config the next run reads,
    and the CronJob's last run into status."""
    with reconciling(KIND):
        bp = _status.parse_spec(BatchPredictionSpec, spec, body, patch, status)
        cache = Cache(kwargs)
        _prepare(body, bp, status, patch, memo, cache)
        _observe(body, status, patch, cache)


def _resolve(bp: BatchPredictionSpec, meta: Meta, project_spec: MLProjectSpec,
             cache: Cache) -> dict[str, Any] | None:
    """The version runs score with: the pinned one, or the newest gated one of a tracked model; None when none."""
    jobs = cache.members("TrainingJob", meta.namespace, bp.project) if bp.model.track else []
    # ModelDeployment's resolution, as the docs promise: a BatchPrediction has the same model and project fields.
    versions = available_versions(bp, meta, project_spec, jobs)  # type: ignore[arg-type]
    if not versions:
        return None
    chosen = versions[-1]
    model = {"name": bp.model.name, "version": chosen.version, "uri": chosen.uri}
    if chosen.training_job:
        model["trainingJob"] = chosen.training_job
    return model


def _prepare(body: kopf.Body, bp: BatchPredictionSpec, status: kopf.Status, patch: kopf.Patch, memo: Any,
             cache: Cache) -> None:
    meta = Meta.of(body)
    old = dict(status or {})
    project = _status.project_or_wait(body, patch, status, cache.project(meta.namespace, bp.project), bp.project,
                                      meta.namespace)
    project_spec = MLProjectSpec.model_validate(project["spec"])
    model = _resolve(bp, meta, project_spec, cache)
    if model is None:
        message = (f"no TrainingJob of model {bp.model.name} has passed its gates yet; waiting for one"
                   if bp.model.track else f"model {bp.model.name} cannot be resolved")
        _status.waiting_for(body, patch, status, cond.PROGRESSING, cond.Reason.NO_MODEL_YET, message)
        raise kopf.TemporaryError(message, delay=30)
    image = bp.image or runtime_image(project_spec, memo)
    workload = builders.workload(bp, meta, project_spec, image)
    children = [builders.config_map(bp, meta, builders.batch_config(bp, meta, model)), workload]
    kind, name = workload["kind"], workload["metadata"]["name"]
    try:
        _children.apply_owned(body, children, cache)
    except kube.ApiException as err:
        if err.status not in (400, 422):  # the API server is unwell or busy: Kopf tries again
            raise
        _refused(body, patch, status, meta, bp, f"{kind} {name}", err)
        return
    conditions = list(old.get("conditions") or [])
    new: dict[str, Any] = {"observedGeneration": meta.generation, "model": model,
                           "workload": {"kind": kind, "name": name}}
    if bp.schedule:
        conditions = cond.set_condition(conditions, cond.PROGRESSING, False, cond.Reason.SCHEDULED,
                                        f"CronJob {name} starts a run on {bp.schedule.cron!r}", meta.generation)
        conditions = cond.set_condition(conditions, cond.READY, True, cond.Reason.SCHEDULED,
                                        f"runs score with {model['name']} version {model['version']}",
                                        meta.generation)
        new["phase"] = "Scheduled"
        previous = (old.get("model") or {}).get("version")
        if previous and previous != model["version"]:
            _events.normal(body, cond.Reason.MODEL_RESOLVED, f"runs from now on score with {model['name']} version "
                           f"{model['version']} (was {previous})")
    else:
        conditions = cond.set_condition(conditions, cond.PROGRESSING, True, cond.Reason.WORKLOAD_CREATED,
                                        f"Job {name} runs `python -m mlcycle_runtime.batch` with {model['name']} "
                                        f"version {model['version']}", meta.generation)
        new.update(phase=old.get("phase") or "Pending", modelVersion=model["version"])
    new["conditions"] = conditions
    _status.write(patch, status, new)


def _refused(body: kopf.Body, patch: kopf.Patch, status: kopf.Status, meta: Meta, bp: BatchPredictionSpec,
             what: str, err: kube.ApiException) -> None:
    """The API server refused the workload (a field it lacks, an invalid value such as an unknown time zone): a
    one-shot run fails at once in its words; a schedule says so until the spec is fixed."""
    message = f"the API server refused the {what}: {kube.refusal(err)}"
    old = dict(status or {})
    conditions = cond.set_condition(list(old.get("conditions", [])), cond.PROGRESSING, False,
                                    cond.Reason.WORKLOAD_REFUSED, message, meta.generation)
    conditions = cond.set_condition(conditions, cond.DEGRADED, True, cond.Reason.WORKLOAD_REFUSED, message,
                                    meta.generation)
    new = {"observedGeneration": meta.generation, "conditions": conditions,
           "phase": "Pending" if bp.schedule else "Failed"}
    if not bp.schedule:
        new["completionTime"] = _now()
    if _status.write(patch, status, new):
        _events.warning(body, cond.Reason.WORKLOAD_REFUSED, message)


@kopf.timer(GROUP, VERSION, PLURAL, interval=5, initial_delay=2, when=_one_shot_running)
def batchprediction_observe(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, **kwargs: Any) -> None:
    """Level-based: the scorer's report and the Job (from the cache) decide a run's phase."""
    _observe(body, status, patch, Cache(kwargs))


@kopf.on.field(GROUP, VERSION, PLURAL, field="status.report")
def batchprediction_report(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, **kwargs: Any) -> None:
    """React to the scorer's report at once instead of waiting for the next timer tick."""
    _observe(body, status, patch, Cache(kwargs))


def _worth_reading(job: dict[str, Any] | None) -> bool:
    """Pods explain a Job that has failures, or is not yet running (pull, scheduling); a running, ready one or a
    complete one has nothing to say (a schedule's last run is looked at every 30 s)."""
    if job is None or batchstatus.job_completed_at(job) is not None:
        return False
    state = job.get("status") or {}
    return not state.get("ready") or bool(state.get("failed"))


def _pods(meta: Meta, job: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not _worth_reading(job):
        return []
    return kube.list_objects("v1", "Pod", meta.namespace, f"job-name={job['metadata']['name']}")


def _observe(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, cache: Cache) -> None:
    old = dict(status or {})
    workload = old.get("workload")
    if not workload:
        return
    with reconciling(KIND):
        meta = Meta.of(body)
        if workload["kind"] == "CronJob":
            cron_job = kube.get("batch/v1", "CronJob", meta.namespace, workload["name"])
            runs = list(cache.owned("Job", cron_job["metadata"]["uid"])) if cron_job else []
            newest = max(runs, key=lambda j: j["metadata"].get("creationTimestamp") or "", default=None)
            observed = batchstatus.observe_schedule(old, cron_job, newest, _pods(meta, newest), meta.generation,
                                                    _now())
        else:
            if old.get("phase") in batchstatus.TERMINAL:
                return
            job = cache.read("batch/v1", "Job", meta.namespace, workload["name"])
            observed = batchstatus.observe_run(old, job, _pods(meta, job), meta.generation, _now())
        if not observed.status:
            return
        _status.write(patch, status, observed.status)
        for type_, reason, message in observed.events:
            (_events.normal if type_ == "Normal" else _events.warning)(body, reason, message)

"""ModelDeployment handlers: resolve the model to serve, let the rollout state machine decide, then make the
per-version servers and the router match the decision, and record it in status."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from .. import analysis, diagnose, kube, rollout
from .. import conditions as cond
from ..api.common import API_VERSION, GROUP, VERSION
from ..api.mlproject import MLProjectSpec
from ..api.modeldeployment import Analysis, ModelDeploymentSpec, ModelDeploymentStatus, Shadow
from ..metrics import ROLLOUT_DECISIONS, reconciling
from ..resources import serving as builders
from ..resources.common import CONFIG_FILE, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_OWNER_KIND, Meta
from ..units import parse_duration
from . import _children, _events, _status
from ._cache import Cache
from .mlproject import runtime_image

PLURAL = "modeldeployments"
VERSION_ANNOTATION = "mlcycle.io/model-version"
# Nudges: annotations whose change is an update event, so the deployment reconciles at once. Not under
# `mlcycle.io/`: Kopf keeps its own state there and leaves every `mlcycle.io/` annotation out of the essence it
# diffs, so a nudge under that prefix was no event at all (deployments then waited for their resync).
NUDGE_PREFIX = "nudge.mlcycle.io"
# Set by a TrainingJob whose model passed its gates on the deployments that track that model.
NUDGE_ANNOTATION = f"{NUDGE_PREFIX}/new-model"
# Set when a model server becomes available (or stops being).
READY_ANNOTATION = f"{NUDGE_PREFIX}/child-ready"


def server_selector(meta: Meta) -> dict[str, str]:
    """The labels of every per-version child (servers, their Services, ConfigMaps, autoscalers, budgets)."""
    return {LABEL_INSTANCE: meta.name, LABEL_COMPONENT: "model-server"}


@dataclass(frozen=True)
class ModelVersion:
    """A servable version: where it is stored and which TrainingJob made it."""

    version: str
    uri: str
    training_job: str | None = None
    finished: str = ""


def available_versions(spec: ModelDeploymentSpec, meta: Meta, project: MLProjectSpec,
                       jobs: list[dict[str, Any]]) -> list[ModelVersion]:
    """Pinned: the one version. Tracked: every Succeeded TrainingJob of the model whose gates passed, oldest first
    (`jobs` are the project's TrainingJob summaries from the cache)."""
    model = spec.model
    if model.uri:
        return [ModelVersion(version=model.uri.rstrip("/").rsplit("/", 1)[-1], uri=model.uri)]
    if model.version:
        uri = f"{project.storage.uri.rstrip('/')}/{spec.project}/models/{model.name}/{model.version}"
        return [ModelVersion(version=model.version, uri=uri)]
    selector = model.track.selector.match_labels if model.track else {}
    found = []
    for job in jobs:
        produced = job.get("model") or {}
        if (job.get("project") == spec.project and job.get("modelName") == model.name
                and all(job["labels"].get(k) == v for k, v in selector.items())
                and job.get("phase") == "Succeeded" and job.get("gatesPassed") is True
                and produced.get("version") and produced.get("uri")):
            found.append(ModelVersion(produced["version"], produced["uri"], job["name"],
                                      job.get("completionTime") or ""))
    return sorted(found, key=lambda v: (v.finished, v.version))


def _serving_state(body: kopf.Body, meta: Meta, cache: Cache) -> tuple[set[str], set[str], int, int]:
    """Versions whose Deployment exists, those Available, and ready/desired replicas over all of them."""
    existing, ready, ready_replicas, desired_replicas = set(), set(), 0, 0
    for deployment in _children.owned(body, cache, "apps/v1", "Deployment", meta.namespace, server_selector(meta)):
        version = (deployment["metadata"].get("annotations") or {}).get(VERSION_ANNOTATION)
        if not version:
            continue
        existing.add(version)
        status = deployment.get("status") or {}
        ready_replicas += status.get("readyReplicas", 0)
        desired_replicas += deployment["spec"].get("replicas", 0)
        if any(c.get("type") == "Available" and c.get("status") == "True" for c in status.get("conditions") or []):
            ready.add(version)
    return existing, ready, ready_replicas, desired_replicas


def _pod_problems(meta: Meta, cache: Cache, ready_replicas: int, desired_replicas: int) -> list[diagnose.Problem]:
    """What keeps model servers or the router from becoming ready (an image that cannot be pulled, no node that
    fits, OOM kills), read from the deployment's pods only while a server replica or the router is missing."""
    router = cache.read("apps/v1", "Deployment", meta.namespace, builders.router_name(meta.name))
    router_status = (router or {}).get("status") or {}
    router_missing = router is not None and router_status.get("readyReplicas", 0) < router["spec"].get("replicas", 1)
    if ready_replicas >= desired_replicas and not router_missing:
        return []
    selector = f"{LABEL_INSTANCE}={meta.name},{LABEL_OWNER_KIND}=modeldeployment"
    return diagnose.pod_problems(kube.list_objects("v1", "Pod", meta.namespace, selector),
                                 memory_hint="raise serving.resources.memory")


def _analysis_settings(spec: ModelDeploymentSpec) -> Analysis | None:
    strategy = spec.strategy
    if strategy.type == "Canary":
        return (strategy.canary.analysis if strategy.canary else Analysis())
    if strategy.type == "BlueGreen":
        return strategy.blue_green.analysis if strategy.blue_green else Analysis()
    return None


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def modeldeployment_reconcile(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch,
                              memo: Any, **kwargs: Any) -> None:
    _reconcile(body, spec, status, patch, memo, Cache(kwargs))


def _rolling_out(status: kopf.Status, **_: Any) -> bool:
    """A rollout under way, or a version draining: both need the clock, not only events."""
    return bool((status or {}).get("rollout") or (status or {}).get("retiring"))


PROGRESS_TICK_S, PROGRESS_IDLE_S = 2.0, 1.0
# Wake a moment after a due time: status times are whole seconds and `now` is truncated to one, so a wake-up a
# millisecond early would find nothing due and leave the run to the next tick.
DUE_MARGIN_S = 0.05


@kopf.timer(GROUP, VERSION, PLURAL, interval=PROGRESS_TICK_S, initial_delay=2, idle=PROGRESS_IDLE_S,
            when=_rolling_out)
async def modeldeployment_progress(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch,
                                   memo: Any, **kwargs: Any) -> None:
    """Every two seconds during a rollout or a drain. An analysis run or the end of a pause that falls due before
    the next tick can begin (Kopf counts the interval from the end of this call, and a change to the object
    postpones it by up to `idle`) is waited for here, so it happens on time: with the tick alone a bad canary
    went up to a tick and a reconcile past interval x failureLimit. A coroutine, so the wait holds no handler
    thread; `body` and `status` are Kopf's live views, fresh after it. Cheap: reconciling reads the cache."""
    wait = _due_in(spec, status)
    if wait is not None and 0 < wait < PROGRESS_TICK_S + PROGRESS_IDLE_S:
        await asyncio.sleep(wait + DUE_MARGIN_S)
    await asyncio.to_thread(_reconcile, body, spec, status, patch, memo, Cache(kwargs))


def _due_in(spec: kopf.Spec, status: kopf.Status) -> float | None:
    """Seconds until the rollout has something to do by the clock; None when nothing is timed or the spec is
    invalid (the reconcile says so)."""
    try:
        md = ModelDeploymentSpec.model_validate(dict(spec))
        current = ModelDeploymentStatus.model_validate(dict(status or {}))
    except ValidationError:
        return None
    return rollout.due_in(md, current, datetime.now(UTC))


@kopf.timer(GROUP, VERSION, PLURAL, interval=60, initial_delay=30, idle=10,
            when=lambda **kw: not _rolling_out(**kw))
def modeldeployment_resync(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch,
                           memo: Any, **kwargs: Any) -> None:
    """A slow safety net otherwise: replicas becoming ready arrive through modeldeployment_child_ready, new gated
    models through NUDGE_ANNOTATION. It reads only the cache, so a thousand deployments cost no API reads."""
    _reconcile(body, spec, status, patch, memo, Cache(kwargs))


@kopf.on.event("apps", "v1", "deployments",
               labels={"app.kubernetes.io/managed-by": "mlcycle-operator", "mlcycle.io/owner-kind": "modeldeployment",
                       LABEL_COMPONENT: "model-server"})
async def modeldeployment_child_ready(body: kopf.Body, event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """A model server's available replicas changed: nudge its ModelDeployment to look now (the rollout waits for
    readiness, status counts replicas). Only servers: a router becoming ready changes no decision, and each nudge
    is two writes. A coroutine, called for every server event: only a nudge goes to a thread (the client
    blocks). The replicas each server had when last seen are kept in the memo (`server_available`), not through
    Kopf's on.field: that would store a last-handled annotation on every server (a write per status change)."""
    uid, seen = body["metadata"]["uid"], memo.server_available
    if event.get("type") == "DELETED":
        seen.pop(uid, None)
        return
    available = (body.get("status") or {}).get("availableReplicas") or 0
    before = seen.get(uid)
    seen[uid] = available
    # The initial listing (type None) only learns the state: a starting operator reconciles every deployment anyway.
    if event.get("type") is None or available == (before or 0):
        return
    owner = next((ref["name"] for ref in body["metadata"].get("ownerReferences") or []
                  if ref.get("kind") == "ModelDeployment"), None)
    if owner:
        await asyncio.to_thread(kube.patch_annotations, API_VERSION, "ModelDeployment",
                                body["metadata"]["namespace"], owner,
                                {READY_ANNOTATION: f"{body['metadata']['name']}={available}"})


def _reconcile(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch, memo: Any,
               cache: Cache) -> None:
    with reconciling("ModelDeployment"):
        md = _status.parse_spec(ModelDeploymentSpec, spec, body, patch, status)
        meta = Meta.of(body)
        old = dict(status or {})
        project = cache.project(meta.namespace, md.project)
        if project is None:
            message = f"MLProject {md.project} does not exist in namespace {meta.namespace}"
            _status.waiting_for(body, patch, status, cond.READY, cond.Reason.PROJECT_NOT_FOUND, message)
            return
        project_spec = MLProjectSpec.model_validate(project["spec"])
        jobs = cache.members("TrainingJob", meta.namespace, md.project) if md.model.track else []
        versions = {v.version: v for v in available_versions(md, meta, project_spec, jobs)}
        desired = list(versions)[-1] if versions else None
        existing, ready, ready_replicas, desired_replicas = _serving_state(body, meta, cache)
        current = ModelDeploymentStatus.model_validate(old)
        candidate = (current.rollout.candidate_version if current.rollout else None) or current.candidate_version
        now = cond.now()
        measurements = None
        settings = _analysis_settings(md)
        # Only when decide() would record a run: the timer ticks far more often than the analysis interval.
        if candidate and candidate in ready and settings is not None and rollout.analysis_due(md, current, now):
            measurements = analysis.measure(memo.config.prometheus_url, settings.metrics, meta.namespace, meta.name,
                                            candidate, settings.interval, memo.config.prometheus_timeout,
                                            stable=current.stable_version)
        shadow = None
        if candidate and candidate in ready and md.strategy.type == "Shadow" and current.stable_version:
            shadow_spec = md.strategy.shadow or Shadow()
            shadow = analysis.shadow_stats(memo.config.prometheus_url, meta.namespace, meta.name,
                                           current.stable_version, candidate, shadow_spec.duration,
                                           memo.config.prometheus_timeout)
        observation = rollout.Observation(
            now=now, desired_version=desired, ready_versions=frozenset(ready),
            existing_versions=frozenset(existing), measurements=measurements, shadow=shadow,
        )
        decision = rollout.decide(md, current, observation)
        ROLLOUT_DECISIONS.labels(decision.action).inc()

        serve = decision.versions_to_run()
        known = {**{v: _serving_now(meta, cache, v, current, old) for v in serve if v not in versions}, **versions}
        image = md.serving.image or runtime_image(project_spec, memo)
        children = []
        for version in serve:
            for child in builders.children_for_version(md, meta, version, known[version].uri, project_spec, image):
                child["metadata"].setdefault("annotations", {})[VERSION_ANNOTATION] = version
                children.append(child)
        stable = known.get(decision.stable_version) if decision.stable_version else None
        children += [
            builders.router_config_map(md, meta, decision.traffic, stable.uri if stable else None, project_spec),
            builders.router_deployment(md, meta, project_spec, image),
            builders.router_service(md, meta),
        ]
        children += [pdb for pdb in (builders.router_pdb(md, meta),) if pdb is not None]
        if md.service_monitor and kube.resource_served("monitoring.coreos.com/v1", "servicemonitors"):
            children.append(builders.service_monitor(md, meta))
        # The routing table changes with the decision, whose own Event says so: no second Event for its ConfigMap.
        router_table = frozenset({f"ConfigMap/{builders.router_name(meta.name)}"} if decision.event_type else ())
        _children.apply_owned(body, children, cache, unannounced=router_table)
        retiring = retiring_versions(existing, current.retiring, serve)
        if retiring and _drained(md, current, decision, now):  # remove the servers of versions that left
            retiring = []
            keep = {builders.version_name(meta.name, v) for v in serve}
            for api_version, kind in RETIRE_ORDER:
                _children.prune(body, cache, api_version, kind, meta.namespace, server_selector(meta), keep)

        problems = _pod_problems(meta, cache, ready_replicas, desired_replicas) + diagnose.autoscaler_problems(
            _children.owned(body, cache, "autoscaling/v2", "HorizontalPodAutoscaler", meta.namespace,
                            server_selector(meta)), now.isoformat().replace("+00:00", "Z"))
        new = _status_from(decision, current, md, meta, old, stable, ready_replicas, desired_replicas, bool(versions),
                           problems)
        new["retiring"] = retiring or None
        _status.write(patch, status, new)
        if decision.event_type is not None:
            (_events.warning if decision.event_type == "Warning" else _events.normal)(
                body, decision.reason, decision.message)
        if problems and (cond.get_condition(old.get("conditions"), cond.DEGRADED) or {}).get("reason") \
                != problems[0].reason:
            _events.warning(body, problems[0].reason, "; ".join(p.message for p in problems))


# The kinds of a version's children in the order they are deleted when it retires: its Deployment last, so that
# an operator killed halfway leaves the Deployment, from which the next one sees the version as still there.
RETIRE_ORDER = (("v1", "Service"), ("v1", "ConfigMap"), ("autoscaling/v2", "HorizontalPodAutoscaler"),
                ("policy/v1", "PodDisruptionBudget"), ("apps/v1", "Deployment"))


def retiring_versions(existing: set[str], stored: list[str], serve: list[str]) -> list[str]:
    """The versions whose children are to go: those with a server Deployment that no longer run, and those status
    already names as retiring. Stored, not only seen: status.retiring is cleared only by the write that follows
    the last deletion, so a version stays listed until every child of it is gone, whatever a killed operator
    had deleted of it (its Deployment, say, and not its ConfigMap, HPA and PDB)."""
    return sorted((set(existing) | set(stored)) - set(serve))


def _serving_now(meta: Meta, cache: Cache, version: str, current: ModelDeploymentStatus,
                 old: dict[str, Any]) -> ModelVersion:
    """A version still served whose source is gone (its TrainingJob deleted, the pin moved on): the model its
    server was configured with. Never another version's model: that would serve the wrong model under its name."""
    config_map = cache.read("v1", "ConfigMap", meta.namespace, builders.version_name(meta.name, version))
    if config_map is not None:
        try:
            uri = json.loads(config_map["data"][CONFIG_FILE])["model"]["uri"]
            job = old.get("trainingJob") if version == current.stable_version else None
            return ModelVersion(version, uri, training_job=job)
        except (KeyError, TypeError, ValueError):
            pass
    if version == current.stable_version and old.get("modelUri"):
        return ModelVersion(version, old["modelUri"], old.get("trainingJob"))
    raise kopf.TemporaryError(f"the model of version {version} is unknown: its source is gone and no server of it "
                              "exists", delay=30)


def _drained(md: ModelDeploymentSpec, current: ModelDeploymentStatus, decision: rollout.Decision, now) -> bool:
    """Whether the versions that left the routing table left at least scaleDownDelay ago (when the last rollout
    ended; now, when this decision ends one). The router switches tables a moment after status changes and may
    send a version requests until then; Recreate takes the old version down first by definition."""
    if md.strategy.type == "Recreate":
        return True
    if decision.history_entry is not None:
        return parse_duration(md.strategy.scale_down_delay) == 0
    if not current.history:
        return True  # no rollout ever ended: a version left by a spec change (pinned model), nothing to drain
    return (now - current.history[-1].time).total_seconds() >= parse_duration(md.strategy.scale_down_delay)


def _status_from(decision: rollout.Decision, current: ModelDeploymentStatus, md: ModelDeploymentSpec, meta: Meta,
                 old: dict[str, Any], stable: ModelVersion | None, ready_replicas: int, desired_replicas: int,
                 has_model: bool, problems: list[diagnose.Problem] = ()) -> dict[str, Any]:
    """Phase, conditions and serving figures here; versions, traffic, rollout and history as the state machine
    applies its decision. `problems`: what the servers' pods show (Ready and Degraded say it in words)."""
    applied = rollout.apply_decision(current, decision).model_dump(mode="json", by_alias=True, exclude_none=True)
    generation = meta.generation
    conditions = list(old.get("conditions") or [])
    serving_ok = decision.stable_version is not None and ready_replicas > 0
    if not has_model and decision.stable_version is None:
        reason, message = cond.Reason.NO_MODEL_YET, (
            f"waiting for a TrainingJob of model {md.model.name} that passes its gates" if md.model.track
            else "the pinned model is not available")
    else:
        waiting_for = decision.stable_version or decision.candidate_version
        reason, message = (cond.Reason.RECONCILED, f"serving {decision.stable_version}") if serving_ok else (
            cond.Reason.WAITING_FOR_REPLICAS, f"waiting for replicas of {waiting_for}")
    in_words = "; ".join(p.message for p in problems)
    if problems and not serving_ok:
        reason, message = problems[0].reason, in_words
    conditions = cond.set_condition(conditions, cond.READY, serving_ok, reason, message, generation)
    progressing = decision.rollout is not None
    previous = cond.get_condition(conditions, cond.PROGRESSING)
    if (decision.reason is rollout.Reason.STABLE_VERSION_SERVING and previous is not None
            and previous.get("status") == "False" and previous.get("observedGeneration") == generation):
        # At rest, the condition keeps the words of the transition that led here ("v2 passed its analysis ..."):
        # replacing them with "v1 serves all traffic" said nothing new and cost every deployment a status write.
        reason, message = previous["reason"], previous["message"]
    else:
        reason, message = decision.reason, decision.message
    conditions = cond.set_condition(conditions, cond.PROGRESSING, progressing, reason, message, generation)
    # A rollback's Degraded stays until the next rollout; one the pods showed goes when they stop showing it.
    from_pods = (cond.get_condition(conditions, cond.DEGRADED) or {}).get("reason") in diagnose.POD_REASONS
    degraded = decision.action is rollout.Action.ROLL_BACK or (
        cond.is_true(conditions, cond.DEGRADED) and not from_pods and decision.action in rollout.QUIET_ACTIONS
        and not progressing)
    if problems and not degraded:
        degraded, degraded_reason, degraded_message = True, problems[0].reason, in_words
    else:
        degraded_reason, degraded_message = (decision.reason, decision.message) if degraded else (
            cond.Reason.HEALTHY, "")
    conditions = cond.set_condition(conditions, cond.DEGRADED, degraded, degraded_reason, degraded_message,
                                    generation)
    phase = "Progressing" if progressing else ("Available" if serving_ok else (
        "Degraded" if degraded else "Pending"))
    return {
        "observedGeneration": generation,
        "phase": phase,
        "conditions": conditions,
        # None removes a key (merge patch): no candidate, no rollout.
        **{key: applied.get(key) for key in ("stableVersion", "candidateVersion", "traffic", "trafficSummary",
                                             "rollout", "history")},
        "endpoint": builders.endpoint(meta),
        "readyReplicas": ready_replicas,
        "desiredReplicas": desired_replicas,
        "trainingJob": stable.training_job if stable else old.get("trainingJob"),
        "modelUri": stable.uri if stable else old.get("modelUri"),
    }


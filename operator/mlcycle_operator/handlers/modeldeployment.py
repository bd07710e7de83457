"""ModelDeployment handlers: resolve the model to serve, let the rollout state machine decide, then make the
per-version servers and the router match the decision, and record it in status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import kopf

from .. import analysis, kube, rollout
from .. import conditions as cond
from ..api.common import API_VERSION, GROUP, VERSION
from ..api.mlproject import MLProjectSpec
from ..api.modeldeployment import Analysis, ModelDeploymentSpec, ModelDeploymentStatus, Shadow
from ..metrics import ROLLOUT_DECISIONS, reconciling
from ..resources import serving as builders
from ..resources.common import LABEL_COMPONENT, LABEL_INSTANCE, Meta
from ..units import parse_duration
from . import _children, _events, _status
from .mlproject import runtime_image

PLURAL = "modeldeployments"
VERSION_ANNOTATION = "mlcycle.io/model-version"
# Set by a TrainingJob whose model passed its gates on the deployments that track that model: an annotation
# change is an update event, so the deployment reconciles at once.
NUDGE_ANNOTATION = "mlcycle.io/new-model"
# Set when a child Deployment becomes available (or stops being): the same kind of nudge.
READY_ANNOTATION = "mlcycle.io/child-ready"
# Decisions that change nothing a person would want an Event for (analysis failures get one regardless).
QUIET_ACTIONS = {rollout.Action.NOTHING, rollout.Action.WAIT_READY, rollout.Action.HOLD, rollout.Action.ANALYSE}


@dataclass(frozen=True)
class ModelVersion:
    """A servable version: where it is stored and which TrainingJob made it."""

    version: str
    uri: str
    training_job: str | None = None
    finished: str = ""


def available_versions(spec: ModelDeploymentSpec, meta: Meta, project: MLProjectSpec,
                       jobs: list[dict[str, Any]]) -> list[ModelVersion]:
    """Pinned: the one version. Tracked: every Succeeded TrainingJob of the model whose gates passed, oldest first."""
    model = spec.model
    if model.uri:
        return [ModelVersion(version=model.uri.rstrip("/").rsplit("/", 1)[-1], uri=model.uri)]
    if model.version:
        uri = f"{project.storage.uri.rstrip('/')}/{spec.project}/models/{model.name}/{model.version}"
        return [ModelVersion(version=model.version, uri=uri)]
    selector = model.track.selector.match_labels if model.track else {}
    found = []
    for job in jobs:
        labels = job["metadata"].get("labels") or {}
        status = job.get("status") or {}
        produced = status.get("model") or {}
        if (job["spec"].get("project") == spec.project and job["spec"]["output"]["modelName"] == model.name
                and all(labels.get(k) == v for k, v in selector.items())
                and status.get("phase") == "Succeeded" and status.get("gatesPassed") is True
                and produced.get("version") and produced.get("uri")):
            found.append(ModelVersion(produced["version"], produced["uri"], job["metadata"]["name"],
                                      status.get("completionTime") or ""))
    return sorted(found, key=lambda v: (v.finished, v.version))


def _serving_state(meta: Meta) -> tuple[set[str], set[str], int, int]:
    """Versions whose Deployment exists, those Available, and ready/desired replicas over all of them."""
    selector = f"{LABEL_INSTANCE}={meta.name},{LABEL_COMPONENT}=model-server"
    existing, ready, ready_replicas, desired_replicas = set(), set(), 0, 0
    for deployment in kube.list_objects("apps/v1", "Deployment", meta.namespace, selector):
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
                              memo: Any, **_: Any) -> None:
    _reconcile(body, spec, status, patch, memo)


def _rolling_out(status: kopf.Status, **_: Any) -> bool:
    """A rollout under way, or a version draining: both need the clock, not only events."""
    return bool((status or {}).get("rollout") or (status or {}).get("retiring"))


@kopf.timer(GROUP, VERSION, PLURAL, interval=5, initial_delay=3, idle=2, when=_rolling_out)
def modeldeployment_progress(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch,
                             memo: Any, **_: Any) -> None:
    """Every few seconds during a rollout: pauses end and analysis runs fall due by the clock."""
    _reconcile(body, spec, status, patch, memo)


@kopf.timer(GROUP, VERSION, PLURAL, interval=60, initial_delay=30, idle=10,
            when=lambda **kw: not _rolling_out(**kw))
def modeldeployment_resync(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch,
                           memo: Any, **_: Any) -> None:
    """A slow safety net otherwise (a thousand deployments must not keep the operator busy): replicas
    becoming ready arrive through modeldeployment_child_ready, new gated models through NUDGE_ANNOTATION."""
    _reconcile(body, spec, status, patch, memo)


@kopf.on.field("apps", "v1", "deployments", field="status.availableReplicas",
               labels={"app.kubernetes.io/managed-by": "mlcycle-operator", "mlcycle.io/owner-kind": "modeldeployment"})
def modeldeployment_child_ready(body: kopf.Body, old: Any, new: Any, **_: Any) -> None:
    """A server or router gained or lost available replicas: nudge its ModelDeployment to look now."""
    if bool(old) == bool(new):
        return  # only becoming available (or losing all of it) changes a decision
    owner = next((ref["name"] for ref in body["metadata"].get("ownerReferences") or []
                  if ref.get("kind") == "ModelDeployment"), None)
    if owner:
        kube.patch_annotations(API_VERSION, "ModelDeployment", body["metadata"]["namespace"], owner,
                               {READY_ANNOTATION: f"{body['metadata']['name']}={new or 0}"})


def _reconcile(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch, memo: Any) -> None:
    with reconciling("ModelDeployment"):
        md = _status.parse_spec(ModelDeploymentSpec, spec, body, patch, status)
        meta = Meta.of(body)
        old = dict(status or {})
        project = kube.get(API_VERSION, "MLProject", meta.namespace, md.project)
        if project is None:
            message = f"MLProject {md.project} does not exist in namespace {meta.namespace}"
            _status.waiting_for(body, patch, status, cond.READY, cond.PROJECT_NOT_FOUND, message)
            return
        project_spec = MLProjectSpec.model_validate(project["spec"])
        jobs = kube.list_objects(API_VERSION, "TrainingJob", meta.namespace) if md.model.track else []
        versions = {v.version: v for v in available_versions(md, meta, project_spec, jobs)}
        desired = list(versions)[-1] if versions else None
        existing, ready, ready_replicas, desired_replicas = _serving_state(meta)
        current = ModelDeploymentStatus.model_validate(old)
        candidate = (current.rollout.candidate_version if current.rollout else None) or current.candidate_version
        now = cond.now()
        measurements = None
        settings = _analysis_settings(md)
        # Only when decide() would record a run: the timer ticks far more often than the analysis interval.
        if candidate and candidate in ready and settings is not None and rollout.analysis_due(md, current, now):
            measurements = analysis.measure(memo.config.prometheus_url, settings.metrics, meta.namespace, meta.name,
                                            candidate, settings.interval, memo.config.prometheus_timeout)
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

        serve = [v for v in (decision.stable_version, decision.candidate_version) if v]
        known = {**{v: ModelVersion(v, old.get("modelUri") or "") for v in serve}, **versions}
        image = md.serving.image or runtime_image(project_spec, memo)
        children = []
        for version in serve:
            for child in builders.children_for_version(md, meta, version, known[version].uri, project_spec, image):
                child["metadata"].setdefault("annotations", {})[VERSION_ANNOTATION] = version
                children.append(child)
        stable = known.get(decision.stable_version) if decision.stable_version else None
        children += [
            builders.router_config_map(md, meta, decision.traffic, stable.uri if stable else None),
            builders.router_deployment(md, meta, project_spec, image),
            builders.router_service(md, meta),
        ]
        if md.service_monitor and kube.resource_served("monitoring.coreos.com/v1", "servicemonitors"):
            children.append(builders.service_monitor(md, meta))
        _children.apply_owned(body, children)
        retiring = sorted(existing - set(serve))
        if retiring and _drained(md, current, decision, now):  # remove the servers of versions that left
            retiring = []
            keep = {builders.version_name(meta.name, v) for v in serve}
            selector = f"{LABEL_INSTANCE}={meta.name},{LABEL_COMPONENT}=model-server"
            for api_version, kind in (("apps/v1", "Deployment"), ("v1", "Service"), ("v1", "ConfigMap"),
                                      ("autoscaling/v2", "HorizontalPodAutoscaler"),
                                      ("policy/v1", "PodDisruptionBudget")):
                _children.prune(body, api_version, kind, meta.namespace, selector, keep)

        new = _status_from(decision, current, md, meta, old, stable, ready_replicas, desired_replicas, bool(versions))
        new["retiring"] = retiring or None
        _status.write(patch, status, new)
        failed_run = decision.analysis_run is not None and decision.analysis_run.verdict == "Fail"
        if decision.action not in QUIET_ACTIONS or failed_run:
            warning = decision.action is rollout.Action.ROLL_BACK or failed_run
            (_events.warning if warning else _events.normal)(body, decision.reason, decision.message)


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
                 has_model: bool) -> dict[str, Any]:
    """Phase, conditions and serving figures here; versions, traffic, rollout and history as the state machine
    applies its decision."""
    applied = rollout.apply_decision(current, decision).model_dump(mode="json", by_alias=True, exclude_none=True)
    generation = meta.generation
    conditions = list(old.get("conditions") or [])
    serving_ok = decision.stable_version is not None and ready_replicas > 0
    if not has_model and decision.stable_version is None:
        reason, message = cond.NO_MODEL, (f"waiting for a TrainingJob of model {md.model.name} that passes its gates"
                                          if md.model.track else "the pinned model is not available")
    else:
        waiting_for = decision.stable_version or decision.candidate_version
        reason, message = (cond.RECONCILED, f"serving {decision.stable_version}") if serving_ok else (
            cond.WAITING_FOR_REPLICAS, f"waiting for replicas of {waiting_for}")
    conditions = cond.set_condition(conditions, cond.READY, serving_ok, reason, message, generation)
    progressing = decision.rollout is not None
    conditions = cond.set_condition(conditions, cond.PROGRESSING, progressing, decision.reason,
                                    decision.message, generation)
    degraded = decision.action is rollout.Action.ROLL_BACK or (
        cond.is_true(conditions, cond.DEGRADED) and decision.action in QUIET_ACTIONS and not progressing)
    conditions = cond.set_condition(conditions, cond.DEGRADED, degraded,
                                    decision.reason if degraded else "Healthy",
                                    decision.message if degraded else "", generation)
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


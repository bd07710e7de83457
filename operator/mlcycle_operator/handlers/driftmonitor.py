"""DriftMonitor handlers: run the monitor workload; turn its reports into status, alerts and retraining."""

from __future__ import annotations

from typing import Any

import kopf

from .. import conditions as cond
from .. import kube, retraining
from ..api.common import API_VERSION, GROUP, VERSION
from ..api.driftmonitor import DriftMonitorSpec
from ..api.mlproject import MLProjectSpec
from ..metrics import RETRAINS, reconciling
from ..resources import monitor as builders
from ..resources.common import Meta
from . import _children, _events, _status
from ._cache import Cache
from .mlproject import runtime_image

PLURAL = "driftmonitors"


def _reference_uri(spec: DriftMonitorSpec, deployment: dict[str, Any]) -> str | None:
    """The training data of the model in service travels with the model (its reference histograms)."""
    if spec.reference.source == "Uri":
        return spec.reference.uri
    return (deployment.get("status") or {}).get("modelUri")


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@kopf.timer(GROUP, VERSION, PLURAL, interval=30, initial_delay=10, idle=10)
def driftmonitor_reconcile(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch, memo: Any,
                           **kwargs: Any) -> None:
    """Also on a timer: the model in service (hence the reference) changes when the deployment promotes."""
    with reconciling("DriftMonitor"):
        monitor = _status.parse_spec(DriftMonitorSpec, spec, body, patch, status)
        meta = Meta.of(body)
        old = dict(status or {})
        deployment = kube.get(API_VERSION, "ModelDeployment", meta.namespace, monitor.deployment)
        if deployment is None:
            message = f"ModelDeployment {monitor.deployment} does not exist in namespace {meta.namespace}"
            _status.waiting_for(body, patch, status, cond.READY, cond.Reason.DEPLOYMENT_NOT_FOUND, message)
            raise kopf.TemporaryError(message, delay=15)
        project_name = deployment["spec"]["project"]
        cache = Cache(kwargs)
        project = cache.project(meta.namespace, project_name)
        project_spec = MLProjectSpec.model_validate(project["spec"]) if project else None
        if project_spec is None:
            raise kopf.TemporaryError(f"MLProject {project_name} not found", delay=15)
        reference = _reference_uri(monitor, deployment)
        if reference is None:
            # Nothing to compare live traffic with: a monitor started now could only fail. The timer looks again.
            message = (f"ModelDeployment {monitor.deployment} serves no model yet; the monitor starts when it does "
                       "(it compares live traffic with the served model's reference histograms)")
            _status.write(patch, status, {"observedGeneration": meta.generation, "phase": "Pending",
                                          "conditions": cond.set_condition(list(old.get("conditions", [])),
                                                                           cond.READY, False,
                                                                           cond.Reason.WAITING_FOR_MODEL, message,
                                                                           meta.generation)})
            return
        config = builders.monitor_config(monitor, meta, deployment.get("status") or {}, memo.config.prometheus_url,
                                         reference)
        with_rule = monitor.alerting.enabled and kube.resource_served("monitoring.coreos.com/v1", "prometheusrules")
        image = monitor.image or runtime_image(project_spec, memo)
        _children.apply_owned(body, builders.children(monitor, meta, project_name, project_spec, image, config,
                                                      with_rule), cache)
        workload = cache.read("apps/v1", "Deployment", meta.namespace, builders.monitor_name(meta.name))
        ready = ((workload or {}).get("status") or {}).get("availableReplicas", 0) > 0
        conditions = cond.set_condition(
            list(old.get("conditions", [])), cond.READY, ready,
            cond.Reason.RECONCILED if ready else cond.Reason.WAITING_FOR_MONITOR,
            "the monitor is running" if ready else "waiting for the monitor Deployment to become available",
            meta.generation)
        phase = old.get("phase") if old.get("phase") in ("Drifted", "Monitoring") else (
            "Monitoring" if ready else "Pending")
        _status.write(patch, status, {"observedGeneration": meta.generation, "phase": phase,
                                      "conditions": conditions})


@kopf.on.field(GROUP, VERSION, PLURAL, field="status.report")
def driftmonitor_report(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch,
                        **_: Any) -> None:
    """The monitor computed; the operator decides: record the report, raise the condition, maybe retrain."""
    old = dict(status or {})
    report = old.get("report") or {}
    if not report.get("time") or (old.get("lastReport") or {}).get("time") == report["time"]:
        return  # already handled: reports are processed once, by their time
    with reconciling("DriftMonitor"):
        monitor = DriftMonitorSpec.model_validate(dict(spec))
        meta = Meta.of(body)
        now = cond.now()
        last_report = {k: report[k] for k in ("time", "window", "samples", "version", "features", "drifted",
                                               "driftedFeatures") if k in report}
        drifted = bool(report.get("drifted")) and int(report.get("samples") or 0) >= monitor.min_samples
        detail = ", ".join(report.get("driftedFeatures") or []) or "none"
        conditions = cond.set_condition(
            list(old.get("conditions", [])), cond.DRIFT_DETECTED, drifted,
            cond.Reason.DRIFT_FOUND if drifted else cond.Reason.NO_DRIFT,
            f"drifted features: {detail} ({report.get('samples')} samples in {report.get('window')})", meta.generation)
        new: dict[str, Any] = {"lastReport": last_report, "conditions": conditions,
                               "phase": "Drifted" if drifted else "Monitoring"}
        if drifted and not cond.is_true(old.get("conditions"), cond.DRIFT_DETECTED):
            _events.warning(body, cond.Reason.DRIFT_FOUND, f"drift on {detail}")
        decision = _retrain_decision(monitor, meta, old, report, now)
        RETRAINS.labels(decision.reason).inc()
        if decision.action == retraining.START:
            job = _start_retraining(monitor, meta, decision, body)
            if job is not None:
                day = now.date().isoformat()
                new.update({
                    "lastRetrain": {"time": now.isoformat().replace("+00:00", "Z"), "trainingJob": job,
                                    "reason": decision.message},
                    "retrainsToday": retraining.retrain_day_count(old, now) + 1,
                    "retrainDay": day,
                })
                _events.normal(body, cond.Reason.RETRAINING_STARTED, f"TrainingJob {job} started: {decision.message}")
        elif drifted:
            _events.normal(body, f"Retraining{decision.reason}", decision.message)
        _status.write(patch, status, new)


def _retrain_decision(monitor: DriftMonitorSpec, meta: Meta, old: dict[str, Any], report: dict[str, Any],
                      now) -> retraining.RetrainDecision:
    deployment = kube.get(API_VERSION, "ModelDeployment", meta.namespace, monitor.deployment) or {}
    project_name = (deployment.get("spec") or {}).get("project")
    project = kube.get(API_VERSION, "MLProject", meta.namespace, project_name) if project_name else None
    policy = MLProjectSpec.model_validate(project["spec"]).retraining if project else None
    if policy is None:
        return retraining.RetrainDecision(retraining.SKIP, cond.Reason.PROJECT_NOT_FOUND,
                                          f"MLProject {project_name} not found")
    active = [j for j in kube.list_objects(API_VERSION, "TrainingJob", meta.namespace,
                                           f"{builders.LABEL_RETRAIN_OF}={meta.name}")
              if (j.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
    return retraining.decide(monitor, old, report, policy, len(active), now, meta.name)


def _start_retraining(monitor: DriftMonitorSpec, meta: Meta, decision: retraining.RetrainDecision,
                      body: kopf.Body) -> str | None:
    """Create the TrainingJob; a job of that name already existing means an earlier attempt created it."""
    deployment = kube.get(API_VERSION, "ModelDeployment", meta.namespace, monitor.deployment) or {}
    source_name = (deployment.get("status") or {}).get("trainingJob")
    source = kube.get(API_VERSION, "TrainingJob", meta.namespace, source_name) if source_name else None
    assert decision.job_name is not None
    try:
        job = builders.retraining_job(monitor, meta, source, decision.job_name, decision.message)
    except ValueError as err:
        RETRAINS.labels("no-source").inc()
        _events.warning(body, cond.Reason.RETRAINING_IMPOSSIBLE,
                        f"{err}: set spec.actions.retrain.template, or serve a model trained by a TrainingJob")
        return None
    try:
        kube.create(job)
    except kube.ApiException as err:
        if err.status != 409:
            raise
    return decision.job_name

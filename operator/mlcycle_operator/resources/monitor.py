"""Children of a DriftMonitor: the monitor workload, its Service and HPA, and its alert rules; and the
TrainingJob it starts on drift."""

from __future__ import annotations

import copy
from typing import Any

from ..api.driftmonitor import DriftMonitorSpec
from ..api.mlproject import MLProjectSpec
from . import common, project
from .common import Meta

KIND = "DriftMonitor"
PORT = 8080
LABEL_RETRAIN_OF = "mlcycle.io/retrained-by"


def monitor_name(monitor: str) -> str:
    return common.child_name(monitor, "drift")


def _labels(spec: DriftMonitorSpec, meta: Meta, project_name: str) -> dict[str, str]:
    return common.labels(KIND, meta.name, "drift-monitor", project=project_name)


def monitor_config(spec: DriftMonitorSpec, meta: Meta, deployment_status: dict[str, Any],
                   prometheus_url: str | None, reference_uri: str | None) -> dict[str, Any]:
    """What the monitor workload reads (runtime contract)."""
    return {
        "kind": KIND,
        "name": meta.name,
        "namespace": meta.namespace,
        "deployment": spec.deployment,
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        "version": deployment_status.get("stableVersion"),
        "referenceUri": reference_uri,
        "prometheusUrl": prometheus_url,
        "port": PORT,
        "report": {"statusField": "report"},
    }


def config_map(spec: DriftMonitorSpec, meta: Meta, project_name: str, config: dict[str, Any]) -> dict[str, Any]:
    return common.config_map(monitor_name(meta.name), meta.namespace, _labels(spec, meta, project_name),
                             {common.CONFIG_FILE: common.config_json(config)})


def deployment(spec: DriftMonitorSpec, meta: Meta, project_name: str, project_spec: MLProjectSpec, image: str,
               config_hash: str) -> dict[str, Any]:
    name = monitor_name(meta.name)
    lbls = _labels(spec, meta, project_name)
    volumes, mounts = project.workload_volumes(project_spec, project_name, name)
    container = common.container(
        "drift-monitor", image, project_spec.defaults.image_pull_policy,
        common.resource_requirements(spec.resources), mounts, command=common.runtime_command("drift"), port=PORT,
        env=common.downward_env(), env_from=project.storage_env_from(project_spec),
        readinessProbe={"httpGet": {"path": "/readyz", "port": PORT}, "periodSeconds": 10},
        livenessProbe={"httpGet": {"path": "/livez", "port": PORT}, "periodSeconds": 20, "initialDelaySeconds": 10})
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": meta.namespace, "labels": lbls},
        "spec": {
            "selector": {"matchLabels": common.selector_labels(meta.name, "drift-monitor")},
            "template": {
                "metadata": {"labels": lbls, "annotations": {
                    common.ANNOTATION_CONFIG_HASH: config_hash,
                    "prometheus.io/scrape": "true", "prometheus.io/port": str(PORT),
                    "prometheus.io/path": "/metrics"}},
                "spec": project.workload_pod(project_name, container, volumes, spec.resources, api=True),
            },
        },
    }
    if hpa(spec, meta, project_name) is None:  # otherwise replicas are the HPA's
        body["spec"]["replicas"] = spec.autoscaling.min_replicas
    return body


def service(spec: DriftMonitorSpec, meta: Meta, project_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": monitor_name(meta.name), "namespace": meta.namespace,
                     "labels": _labels(spec, meta, project_name)},
        "spec": {"selector": common.selector_labels(meta.name, "drift-monitor"),
                 "ports": [{"name": "http", "port": PORT, "targetPort": "http"}]},
    }


def hpa(spec: DriftMonitorSpec, meta: Meta, project_name: str) -> dict[str, Any] | None:
    if spec.autoscaling.max_replicas <= spec.autoscaling.min_replicas:
        return None
    name = monitor_name(meta.name)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": meta.namespace, "labels": _labels(spec, meta, project_name)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": spec.autoscaling.min_replicas,
            "maxReplicas": spec.autoscaling.max_replicas,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 75}}}],
        },
    }


def prometheus_rule(spec: DriftMonitorSpec, meta: Meta, project_name: str) -> dict[str, Any] | None:
    if not spec.alerting.enabled:
        return None
    selector = f'monitor="{meta.name}",namespace="{meta.namespace}"'
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": monitor_name(meta.name), "namespace": meta.namespace,
                     "labels": _labels(spec, meta, project_name)},
        "spec": {"groups": [{
            "name": f"mlcycle-drift-{meta.name}",
            "rules": [{
                "alert": "MlcycleFeatureDrift",
                "expr": f"max by (feature) (mlcycle_drift_detected{{{selector}}}) > 0",
                "for": spec.alerting.for_,
                "labels": {"severity": spec.alerting.severity},
                "annotations": {
                    "summary": f"Drift on {{{{ $labels.feature }}}} for ModelDeployment {spec.deployment}",
                    "description": f"DriftMonitor {meta.namespace}/{meta.name} reports drift; see its status.",
                },
            }],
        }]},
    }


def children(spec: DriftMonitorSpec, meta: Meta, project_name: str, project_spec: MLProjectSpec, image: str,
             config: dict[str, Any], with_prometheus_rule: bool) -> list[dict[str, Any]]:
    cm = config_map(spec, meta, project_name, config)
    config_hash = common.content_hash(cm["data"][common.CONFIG_FILE])
    built = [cm, deployment(spec, meta, project_name, project_spec, image, config_hash),
             service(spec, meta, project_name), hpa(spec, meta, project_name),
             prometheus_rule(spec, meta, project_name) if with_prometheus_rule else None]
    return [b for b in built if b is not None]


def retraining_job(spec: DriftMonitorSpec, meta: Meta, source: dict[str, Any] | None, name: str,
                   reason: str) -> dict[str, Any]:
    """The TrainingJob started on drift: the template, or a clone of the in-service model's job (fresh data
    because the entity source is read again at run time)."""
    if spec.actions.retrain and spec.actions.retrain.template:
        job_spec = copy.deepcopy(spec.actions.retrain.template)
    elif source is not None:
        job_spec = copy.deepcopy(source["spec"])
    else:
        raise ValueError("no retraining template and no TrainingJob lineage to clone")
    # The in-service model's labels are what the tracking ModelDeployment selects on; keep them either way.
    source_labels = {k: v for k, v in ((source or {}).get("metadata", {}).get("labels") or {}).items()
                     if not k.startswith(("app.kubernetes.io/", LABEL_RETRAIN_OF))}
    return {
        "apiVersion": "mlcycle.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {
            "name": name,
            "namespace": meta.namespace,
            # Keeps the model-tracking labels, so the ModelDeployment that tracks them picks the result up.
            "labels": {**source_labels, LABEL_RETRAIN_OF: meta.name},
            "annotations": {"mlcycle.io/retrain-reason": reason[:1000]},
        },
        "spec": job_spec,
    }

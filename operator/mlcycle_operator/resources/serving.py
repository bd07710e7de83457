"""Children of a ModelDeployment: per model version a Deployment, Service, HPA and PDB; one router in front."""

from __future__ import annotations

import math
from typing import Any

from ..api.mlproject import MLProjectSpec
from ..api.modeldeployment import ModelDeploymentSpec, VersionTraffic
from ..units import parse_duration, parse_quantity
from . import common, project
from .common import Meta

KIND = "ModelDeployment"
SERVER_PORT = 3000
ROUTER_PORT = 8080
ROUTER_REPLICAS = 2
STICKY_HEADER = "x-mlcycle-variant"


def version_name(deployment: str, version: str) -> str:
    return common.child_name(deployment, "v", version)


# Under the project's storage, where routers write the prediction log unless logging.uri says otherwise.
PREDICTION_LOG_PATH = "predictions"


def router_name(deployment: str) -> str:
    return common.child_name(deployment, "router")


def version_url(deployment: str, namespace: str, version: str) -> str:
    return f"http://{version_name(deployment, version)}.{namespace}.svc:{SERVER_PORT}"


def _version_labels(spec: ModelDeploymentSpec, meta: Meta, version: str) -> dict[str, str]:
    return common.labels(KIND, meta.name, "model-server", project=spec.project,
                         **{common.LABEL_VERSION: common.child_name(version)})


def _version_selector(meta: Meta, version: str) -> dict[str, str]:
    return common.selector_labels(meta.name, "model-server", **{common.LABEL_VERSION: common.child_name(version)})


def max_request_bytes(spec: ModelDeploymentSpec) -> int:
    """spec.serving.maxRequestSize in whole bytes (a fraction of a byte rounds up)."""
    return max(1, math.ceil(parse_quantity(spec.serving.max_request_size)))


def server_config(spec: ModelDeploymentSpec, meta: Meta, version: str, model_uri: str) -> dict[str, Any]:
    """What the model server of one version reads (runtime contract)."""
    serving = spec.serving
    return {
        "kind": KIND,
        "name": meta.name,
        "namespace": meta.namespace,
        "model": {"name": spec.model.name, "version": version, "uri": model_uri},
        "port": SERVER_PORT,
        "batching": serving.batching.model_dump(mode="json", by_alias=True),
        "onlineFeatures": (serving.online_features.model_dump(mode="json", by_alias=True)
                           if serving.online_features else None),
        "featureStore": {"repoPath": "/etc/feast"} if serving.online_features else None,
        "maxRequestBytes": max_request_bytes(spec),
    }


def server_config_map(spec: ModelDeploymentSpec, meta: Meta, version: str, model_uri: str) -> dict[str, Any]:
    return common.config_map(
        version_name(meta.name, version), meta.namespace, _version_labels(spec, meta, version),
        {common.CONFIG_FILE: common.config_json(server_config(spec, meta, version, model_uri))},
    )


def _probe(path: str, port: int, period: int = 5) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "timeoutSeconds": 2,
            "failureThreshold": 3}


def _spread(selector: dict[str, str]) -> dict[str, Any]:
    """Pod-spec fields that spread a workload's replicas over nodes, so one node's loss is not all of them. A
    preference (ScheduleAnyway), never a reason to stay Pending: pods that share a ReadWriteOnce claim can only run
    on one node. Counted per rollout revision (pod-template-hash), so a rolling update spreads its new pods too."""
    return {"topologySpreadConstraints": [{
        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": selector}, "matchLabelKeys": ["pod-template-hash"]}]}


def _most_replicas(serving_spec: Any) -> int:
    return serving_spec.autoscaling.max_replicas if serving_spec.autoscaling.enabled else serving_spec.replicas


def server_workers(resources: Any) -> int:
    """Worker processes for a model server: one per whole CPU of its limit (at least one), so a 4-CPU pod uses its
    4 cores. Each worker holds its own copy of the model, so memory should grow with the CPUs."""
    return max(1, math.floor(parse_quantity(resources.cpu)))


def deployment_for_version(spec: ModelDeploymentSpec, meta: Meta, version: str, model_uri: str,
                           project_spec: MLProjectSpec, image: str, config_hash: str) -> dict[str, Any]:
    """The Deployment that serves one model version of a ModelDeployment."""
    serving = spec.serving
    name = version_name(meta.name, version)
    volumes, mounts = project.workload_volumes(project_spec, spec.project, name,
                                               feature_store=serving.online_features is not None)
    lbls = _version_labels(spec, meta, version)
    container = common.container(
        "model-server", image, project_spec.defaults.image_pull_policy, common.resource_requirements(serving.resources),
        mounts, command=common.runtime_command("serve"), port=SERVER_PORT,
        env=[*common.downward_env(), {"name": "BENTOML_HOME", "value": "/tmp/bentoml"},
             {"name": "MLCYCLE_SERVE_WORKERS", "value": str(server_workers(serving.resources))},
             *([{"name": "MLCYCLE_DEVICE", "value": "cuda"}] if serving.resources.gpu else [])],
        env_from=project.storage_env_from(project_spec), readinessProbe=_probe("/readyz", SERVER_PORT),
        livenessProbe={**_probe("/livez", SERVER_PORT, 10), "initialDelaySeconds": 10})
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": meta.namespace, "labels": lbls},
        "spec": {
            "selector": {"matchLabels": _version_selector(meta, version)},
            # Never drop below the current capacity while a version rolls its own pods.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": lbls,
                    "annotations": {
                        common.ANNOTATION_CONFIG_HASH: config_hash,
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(SERVER_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": project.workload_pod(
                    spec.project, container, volumes, serving.resources, api=False,
                    **(_spread(_version_selector(meta, version)) if _most_replicas(serving) > 1 else {})),
            },
        },
    }
    # With an HPA, replicas are the HPA's: setting them here would undo every scale-up on each reconcile.
    if not serving.autoscaling.enabled:
        deployment["spec"]["replicas"] = serving.replicas
    return deployment


def service_for_version(spec: ModelDeploymentSpec, meta: Meta, version: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": version_name(meta.name, version), "namespace": meta.namespace,
                     "labels": _version_labels(spec, meta, version)},
        "spec": {
            "selector": _version_selector(meta, version),
            "ports": [{"name": "http", "port": SERVER_PORT, "targetPort": "http"}],
        },
    }


def hpa_for_version(spec: ModelDeploymentSpec, meta: Meta, version: str) -> dict[str, Any] | None:
    scaling = spec.serving.autoscaling
    if not scaling.enabled:
        return None
    metrics = []
    if scaling.target_cpu_utilization:
        metrics.append({"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": scaling.target_cpu_utilization}}})
    if scaling.target_requests_per_second:
        metrics.append({"type": "Pods", "pods": {
            "metric": {"name": "mlcycle_requests_per_second"},
            "target": {"type": "AverageValue", "averageValue": str(scaling.target_requests_per_second)}}})
    name = version_name(meta.name, version)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": meta.namespace, "labels": _version_labels(spec, meta, version)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": metrics,
            "behavior": {"scaleDown": {
                "stabilizationWindowSeconds": int(parse_duration(scaling.scale_down_stabilization))}},
        },
    }


def pdb_for_version(spec: ModelDeploymentSpec, meta: Meta, version: str) -> dict[str, Any] | None:
    """Keep at least one replica through voluntary disruptions, when there is more than one."""
    replicas = spec.serving.autoscaling.min_replicas if spec.serving.autoscaling.enabled else spec.serving.replicas
    if replicas < 2:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": version_name(meta.name, version), "namespace": meta.namespace,
                     "labels": _version_labels(spec, meta, version)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _version_selector(meta, version)}},
    }


def prediction_log(spec: ModelDeploymentSpec, project_spec: MLProjectSpec) -> dict[str, Any] | None:
    """What the router's prediction log needs: where, how much, how often, which columns to key on."""
    logging = spec.logging
    if logging is None:
        return None
    online = spec.serving.online_features
    return {"uri": logging.uri or project_spec.storage.uri.rstrip("/") + "/" + PREDICTION_LOG_PATH,
            "sampleRate": logging.sample_rate, "flushSeconds": parse_duration(logging.flush_interval),
            "entityKeys": list(logging.entity_keys or (online.entity_keys if online else []))}


def router_config(spec: ModelDeploymentSpec, meta: Meta, traffic: list[VersionTraffic],
                  reference_uri: str | None, project_spec: MLProjectSpec | None = None) -> dict[str, Any]:
    """The router's routing table; it also watches its ModelDeployment and applies changes live."""
    log = prediction_log(spec, project_spec) if project_spec is not None else None
    return {
        "kind": KIND,
        "name": meta.name,
        "namespace": meta.namespace,
        "port": ROUTER_PORT,
        "stickyHeader": STICKY_HEADER,
        "routes": [
            {"version": t.version, "weight": t.weight, "role": t.role, "shadowPercent": t.shadow_percent,
             "url": version_url(meta.name, meta.namespace, t.version)}
            for t in traffic
        ],
        # Bin edges of the reference data, so request features are histogrammed for drift.
        "referenceUri": reference_uri,
        "maxRequestBytes": max_request_bytes(spec),
        **({"predictionLog": log} if log is not None else {}),
    }


def router_config_map(spec: ModelDeploymentSpec, meta: Meta, traffic: list[VersionTraffic],
                      reference_uri: str | None, project_spec: MLProjectSpec | None = None) -> dict[str, Any]:
    return common.config_map(
        router_name(meta.name), meta.namespace, common.labels(KIND, meta.name, "router", project=spec.project),
        {common.CONFIG_FILE: common.config_json(router_config(spec, meta, traffic, reference_uri, project_spec))},
    )


def router_deployment(spec: ModelDeploymentSpec, meta: Meta, project_spec: MLProjectSpec, image: str,
                      replicas: int = ROUTER_REPLICAS) -> dict[str, Any]:
    """The stable endpoint: applies weights, mirrors shadow traffic, exports per-version metrics."""
    name = router_name(meta.name)
    lbls = common.labels(KIND, meta.name, "router", project=spec.project)
    # The router reads the stable model's reference bin edges from the project's storage.
    volumes, mounts = project.workload_volumes(project_spec, spec.project, name)
    container = common.container(
        "router", image, project_spec.defaults.image_pull_policy,
        # A proxy: it needs little CPU at rest (100m requested, as the operator's) and bursts to its limit.
        # Every pod that mounts a ReadWriteOnce claim runs on one node (kind's 2 CPUs): requests add up there.
        {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}, mounts,
        command=common.runtime_command("router"), port=ROUTER_PORT, env=common.downward_env(),
        env_from=project.storage_env_from(project_spec), readinessProbe=_probe("/readyz", ROUTER_PORT),
        livenessProbe={**_probe("/livez", ROUTER_PORT, 10), "initialDelaySeconds": 5})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": meta.namespace, "labels": lbls},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": common.selector_labels(meta.name, "router")},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": lbls, "annotations": {
                    "prometheus.io/scrape": "true", "prometheus.io/port": str(ROUTER_PORT),
                    "prometheus.io/path": "/metrics"}},
                "spec": project.workload_pod(spec.project, container, volumes, api=True,
                                             **(_spread(common.selector_labels(meta.name, "router"))
                                                if replicas > 1 else {})),
            },
        },
    }


def router_pdb(spec: ModelDeploymentSpec, meta: Meta, replicas: int = ROUTER_REPLICAS) -> dict[str, Any] | None:
    """The endpoint stays up through voluntary disruptions (node drains): one router at a time may go."""
    if replicas < 2:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": router_name(meta.name), "namespace": meta.namespace,
                     "labels": common.labels(KIND, meta.name, "router", project=spec.project)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": common.selector_labels(meta.name, "router")}},
    }


def router_service(spec: ModelDeploymentSpec, meta: Meta) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": meta.name, "namespace": meta.namespace,
                     "labels": common.labels(KIND, meta.name, "router", project=spec.project)},
        "spec": {
            "type": spec.service.type,
            "selector": common.selector_labels(meta.name, "router"),
            "ports": [{"name": "http", "port": 80, "targetPort": "http",
                       **({"nodePort": spec.service.node_port} if spec.service.node_port else {})}],
        },
    }


def endpoint(meta: Meta) -> str:
    return f"http://{meta.name}.{meta.namespace}.svc"


def service_monitor(spec: ModelDeploymentSpec, meta: Meta) -> dict[str, Any]:
    """For clusters running the Prometheus Operator: scrape router and servers through their Services."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": meta.name, "namespace": meta.namespace,
                     "labels": common.labels(KIND, meta.name, "monitoring", project=spec.project)},
        "spec": {
            "selector": {"matchLabels": {common.LABEL_INSTANCE: meta.name, common.LABEL_OWNER_KIND: "modeldeployment"}},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
        },
    }


def children_for_version(spec: ModelDeploymentSpec, meta: Meta, version: str, model_uri: str,
                         project_spec: MLProjectSpec, image: str) -> list[dict[str, Any]]:
    config = server_config_map(spec, meta, version, model_uri)
    config_hash = common.content_hash(config["data"][common.CONFIG_FILE])
    built = [
        config,
        deployment_for_version(spec, meta, version, model_uri, project_spec, image, config_hash),
        service_for_version(spec, meta, version),
        hpa_for_version(spec, meta, version),
        pdb_for_version(spec, meta, version),
    ]
    return [b for b in built if b is not None]

"""Children of an MLProject: workload identity, Feast config, materialization, model storage."""

from __future__ import annotations

from typing import Any

import yaml

from ..api.common import Resources
from ..api.mlproject import MLProjectSpec
from . import common
from .common import Meta

KIND = "MLProject"
FEATURE_STORE_FILE = "feature_store.yaml"


def workload_service_account_name(project: str) -> str:
    return common.child_name("mlcycle", project, "workload")


def pvc_claim_name(spec: MLProjectSpec) -> str | None:
    """The claim named by a pvc:// storage URI (pvc://<claim>/<path>), else None."""
    if not spec.storage.uri.startswith("pvc://"):
        return None
    return spec.storage.uri.removeprefix("pvc://").split("/", 1)[0]


def _labels(meta: Meta, component: str) -> dict[str, str]:
    return common.labels(KIND, meta.name, component, project=meta.name)


def service_account(spec: MLProjectSpec, meta: Meta) -> dict[str, Any]:
    """The identity every workload of the project runs as (training, serving, router, monitor)."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": workload_service_account_name(meta.name), "namespace": meta.namespace,
                     "labels": _labels(meta, "workload-identity")},
        # No token unless a pod asks for one (workload_pod's `api`): a model server or a Ray worker that a
        # request or a bug takes over holds no credential for the API.
        "automountServiceAccountToken": False,
    }


def workload_role(spec: MLProjectSpec, meta: Meta) -> dict[str, Any]:
    """Exactly what workloads use: report results into their own resource's status, read config, and
    (the router) watch its ModelDeployment and the EndpointSlices of the version Services."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": workload_service_account_name(meta.name), "namespace": meta.namespace,
                     "labels": _labels(meta, "workload-identity")},
        "rules": [
            # Trainer writes status.result; drift monitor and batch scorer write status.report.
            {"apiGroups": ["mlcycle.io"],
             "resources": ["trainingjobs/status", "driftmonitors/status", "batchpredictions/status"],
             "verbs": ["get", "patch"]},
            # Router learns its routing table by watching its ModelDeployment.
            {"apiGroups": ["mlcycle.io"], "resources": ["modeldeployments", "trainingjobs", "driftmonitors"],
             "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
        ],
    }


def workload_role_binding(spec: MLProjectSpec, meta: Meta) -> dict[str, Any]:
    name = workload_service_account_name(meta.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": meta.namespace, "labels": _labels(meta, "workload-identity")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": meta.namespace}],
    }


def feature_store_yaml(spec: MLProjectSpec) -> str:
    """feature_store.yaml as Feast reads it."""
    fs = spec.feature_store
    assert fs is not None
    online: dict[str, Any] = {"type": fs.online_store.type}
    if fs.online_store.type == "sqlite":
        online["path"] = fs.online_store.path or "/tmp/feast/online.db"
    else:
        online["connection_string"] = fs.online_store.connection_string
    offline: dict[str, Any] = {"type": fs.offline_store.type}
    config = {
        "project": fs.project,
        "registry": fs.registry,
        "provider": "local",
        "offline_store": offline,
        "online_store": online,
        "entity_key_serialization_version": 3,
    }
    return yaml.safe_dump(config, sort_keys=False)


def feature_store_config_map_name(project: str) -> str:
    return common.child_name("mlcycle", project, "feature-store")


def feature_store_config_map(spec: MLProjectSpec, meta: Meta) -> dict[str, Any] | None:
    if spec.feature_store is None:
        return None
    return common.config_map(
        feature_store_config_map_name(meta.name), meta.namespace, _labels(meta, "feature-store"),
        {FEATURE_STORE_FILE: feature_store_yaml(spec)},
    )


def materialization_cron_job(spec: MLProjectSpec, meta: Meta, image: str) -> dict[str, Any] | None:
    """Runs `feast materialize-incremental` on the project's schedule."""
    fs = spec.feature_store
    if fs is None or not fs.materialization.enabled:
        return None
    config_volume = {"name": "feature-store", "configMap": {"name": feature_store_config_map_name(meta.name)}}
    tmp_volume, tmp_mount = common.scratch_volume()
    volumes, mounts = [config_volume, tmp_volume], [{"name": "feature-store", "mountPath": "/etc/feast"}, tmp_mount]
    volumes, mounts = with_storage(spec, volumes, mounts)
    container = common.container(
        "materialize", image, spec.defaults.image_pull_policy,
        # Materialization needs no GPU, whatever the project's default resources say.
        common.resource_requirements(spec.defaults.resources.model_copy(update={"gpu": 0})), mounts,
        command=["python", "-m", "mlcycle_runtime.features", "materialize", "--repo", "/etc/feast"],
        env=common.downward_env())
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": common.child_name("mlcycle", meta.name, "materialize"), "namespace": meta.namespace,
                     "labels": _labels(meta, "materialization")},
        "spec": {
            "schedule": fs.materialization.schedule,
            # Two materializations of one store at once would only race each other.
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 2,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {"spec": {
                "backoffLimit": 2,
                "template": {
                    "metadata": {"labels": _labels(meta, "materialization")},
                    "spec": {
                        "restartPolicy": "Never",
                        "serviceAccountName": workload_service_account_name(meta.name),
                        "automountServiceAccountToken": False,  # Feast reads and writes stores, not the API
                        "securityContext": common.pod_security(),
                        "containers": [container],
                        "volumes": volumes,
                    },
                },
            }},
        },
    }


def storage_env_from(spec: MLProjectSpec) -> list[dict[str, Any]]:
    """Credentials for s3:// storage (AWS_* variables from the project's Secret), for pods that touch models."""
    return [{"secretRef": {"name": spec.storage.secret_name}}] if spec.storage.secret_name else []


def with_storage(spec: MLProjectSpec, volumes: list, mounts: list) -> tuple[list, list]:
    """Add the pvc:// model store, mounted at /mnt/pvc/<claim>, when the project has one."""
    claim = pvc_claim_name(spec)
    if claim is None:
        return volumes, mounts
    return ([*volumes, {"name": "storage", "persistentVolumeClaim": {"claimName": claim}}],
            [*mounts, {"name": "storage", "mountPath": f"/mnt/pvc/{claim}"}])


def workload_volumes(spec: MLProjectSpec, project: str, config_map: str, *,
                     feature_store: bool = False) -> tuple[list, list]:
    """What a runtime pod of the project mounts: its config at /etc/mlcycle, a writable /tmp, the Feast repo
    at /etc/feast (when it reads features and the project has a store), and the model store."""
    volume, mount = common.config_volume(config_map)
    tmp_volume, tmp_mount = common.scratch_volume()
    volumes, mounts = [volume, tmp_volume], [mount, tmp_mount]
    if feature_store and spec.feature_store is not None:
        volumes.append({"name": "feature-store", "configMap": {"name": feature_store_config_map_name(project)}})
        mounts.append({"name": "feature-store", "mountPath": "/etc/feast", "readOnly": True})
    return with_storage(spec, volumes, mounts)


def workload_pod(project: str, container: dict[str, Any], volumes: list, gpu_resources: Resources | None = None,
                 *, api: bool, **extra: Any) -> dict[str, Any]:
    """The pod spec of a runtime workload: the project's identity, with its API token only where the workload
    calls the API (`api`: the trainer and the monitor report status, the router watches), restricted security,
    GPU toleration when `gpu_resources` asks for GPUs."""
    return {
        **extra,
        "serviceAccountName": workload_service_account_name(project),
        "automountServiceAccountToken": api,
        "securityContext": common.pod_security(),
        "containers": [container],
        "volumes": volumes,
        **(common.gpu_scheduling(gpu_resources) if gpu_resources is not None else {}),
    }


def storage_pvc(spec: MLProjectSpec, meta: Meta) -> dict[str, Any] | None:
    claim = pvc_claim_name(spec)
    if claim is None:
        return None
    pvc = spec.storage.pvc
    size = str(pvc.size) if pvc else "10Gi"
    access = pvc.access_mode if pvc else "ReadWriteMany"
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim, "namespace": meta.namespace, "labels": _labels(meta, "storage")},
        "spec": {"accessModes": [access], "resources": {"requests": {"storage": size}}},
    }
    if pvc and pvc.storage_class_name:
        body["spec"]["storageClassName"] = pvc.storage_class_name
    return body


def children(spec: MLProjectSpec, meta: Meta, image: str) -> list[dict[str, Any]]:
    """Every object an MLProject owns, in the order they should be applied."""
    built = [
        storage_pvc(spec, meta),
        service_account(spec, meta),
        workload_role(spec, meta),
        workload_role_binding(spec, meta),
        feature_store_config_map(spec, meta),
        materialization_cron_job(spec, meta, image),
    ]
    return [b for b in built if b is not None]

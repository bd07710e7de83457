"""Pieces every builder uses: names, labels, the restricted pod security settings, config ConfigMaps."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..api.common import Resources

CONFIG_MOUNT = "/etc/mlcycle"
CONFIG_FILE = "config.json"
RUNTIME_UID = 65532
MANAGED_BY = "mlcycle-operator"

LABEL_PROJECT = "mlcycle.io/project"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_VERSION = "mlcycle.io/model-version"
LABEL_OWNER_KIND = "mlcycle.io/owner-kind"
ANNOTATION_CONFIG_HASH = "mlcycle.io/config-hash"


@dataclass(frozen=True)
class Meta:
    """What builders need from the owning object's metadata."""

    name: str
    namespace: str
    uid: str = ""
    generation: int = 1
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, body: dict[str, Any]) -> Meta:
        meta = body["metadata"]
        return cls(
            name=meta["name"], namespace=meta["namespace"], uid=meta.get("uid", ""),
            generation=meta.get("generation", 1), labels=dict(meta.get("labels") or {}),
        )


def child_name(*parts: str, limit: int = 63) -> str:
    """A DNS-1123 name from parts; long names keep a hash suffix so they stay unique."""
    name = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def labels(owner_kind: str, owner: str, component: str, project: str | None = None, **extra: str) -> dict[str, str]:
    """The standard labels of every child, so `kubectl get -l` and the GC story are obvious."""
    result = {
        "app.kubernetes.io/name": "mlcycle",
        LABEL_INSTANCE: owner,
        LABEL_COMPONENT: component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_OWNER_KIND: owner_kind.lower(),
    }
    if project:
        result[LABEL_PROJECT] = project
    result.update(extra)
    return result


def selector_labels(owner: str, component: str, **extra: str) -> dict[str, str]:
    """The immutable subset used in Deployment selectors."""
    return {LABEL_INSTANCE: owner, LABEL_COMPONENT: component, **extra}


def config_map(name: str, namespace: str, lbls: dict[str, str], data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": lbls},
        "data": data,
    }


def config_json(config: dict[str, Any]) -> str:
    """The runtime config as written into the ConfigMap: stable key order, so the hash is stable."""
    return json.dumps(config, indent=2, sort_keys=True, default=str)


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def restricted_container_security() -> dict[str, Any]:
    """Pod Security Standards 'restricted': non-root, read-only root, no privilege escalation."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_UID,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container(name: str, image: str, pull_policy: str, resources: dict[str, Any], mounts: list[dict[str, Any]], *,
              command: list[str] | None = None, port: int | None = None, env: list[dict[str, Any]] | None = None,
              env_from: list[dict[str, Any]] | None = None, **probes: dict[str, Any]) -> dict[str, Any]:
    """A container of one of mlcycle's images, restricted (`restricted_container_security`); `probes` are
    readinessProbe/livenessProbe. Fields left None are left out."""
    fields: dict[str, Any] = {
        "name": name, "image": image, "imagePullPolicy": pull_policy, "command": command,
        "ports": [{"name": "http", "containerPort": port}] if port is not None else None,
        "env": env, "envFrom": env_from, "resources": resources,
        "securityContext": restricted_container_security(), **probes, "volumeMounts": mounts,
    }
    return {key: value for key, value in fields.items() if value is not None}


def pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "fsGroup": RUNTIME_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def resource_requirements(resources: Resources) -> dict[str, Any]:
    """Requests equal limits for CPU-less surprises; GPUs only appear when asked for."""
    amounts: dict[str, Any] = {"cpu": str(resources.cpu), "memory": str(resources.memory)}
    limits = dict(amounts)
    if resources.gpu:
        limits["nvidia.com/gpu"] = str(resources.gpu)
        amounts["nvidia.com/gpu"] = str(resources.gpu)
    return {"requests": amounts, "limits": limits}


def gpu_scheduling(resources: Resources) -> dict[str, Any]:
    """GPU pods tolerate the usual GPU-node taint; CPU pods stay off GPU nodes by that same taint."""
    if not resources.gpu:
        return {}
    return {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}


def config_volume(config_map_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The volume and mount that put config.json at /etc/mlcycle/config.json."""
    volume = {"name": "config", "configMap": {"name": config_map_name}}
    mount = {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True}
    return volume, mount


def scratch_volume() -> tuple[dict[str, Any], dict[str, Any]]:
    """A writable /tmp, since the root filesystem is read-only."""
    return {"name": "tmp", "emptyDir": {}}, {"name": "tmp", "mountPath": "/tmp"}


def runtime_command(module: str) -> list[str]:
    return ["python", "-m", f"mlcycle_runtime.{module}", "--config", f"{CONFIG_MOUNT}/{CONFIG_FILE}"]


def downward_env() -> list[dict[str, Any]]:
    """Lets the runtime name itself in metrics and find its own resource."""
    return [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]

"""Helpers for integration tests that drive mlcycle resources through the real API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {m["kind"]: m for m in (yaml.safe_load(p.read_text())
                                   for p in sorted((ROOT / "examples/churn/manifests").glob("*.yaml")))}
GROUP, VERSION = "mlcycle.io", "v1alpha1"
PLURALS = {"MLProject": "mlprojects", "TrainingJob": "trainingjobs",
           "ModelDeployment": "modeldeployments", "DriftMonitor": "driftmonitors",
           "BatchPrediction": "batchpredictions"}


def wait_for(predicate, timeout: float = 60.0, what: str = "condition", every: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


class Mlcycle:
    """Small helpers over the real API for one namespace."""

    def __init__(self, api_client, namespace: str):
        self.objects = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.namespace = namespace

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self.objects.create_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                            PLURALS[manifest["kind"]], manifest)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return self.objects.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURALS[kind], name)

    def status(self, kind: str, name: str) -> dict[str, Any]:
        return self.get(kind, name).get("status") or {}

    def list(self, kind: str, selector: str = "") -> list[dict[str, Any]]:
        return self.objects.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURALS[kind],
                                                          label_selector=selector)["items"]

    def report(self, kind: str, name: str, field: str, value: dict[str, Any]) -> None:
        """What a workload does: patch its own resource's status subresource."""
        self.objects.patch_namespaced_custom_object_status(GROUP, VERSION, self.namespace, PLURALS[kind], name,
                                                           {"status": {field: value}})

    def events(self, name: str) -> list[str]:
        return [f"{e.reason}: {e.message}" for e in self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}").items]

    def wait_event(self, name: str, match, what: str, timeout: float = 30.0) -> list[str]:
        """Wait for an Event on ``name`` that ``match`` accepts; return all of its Events then.

        Kopf posts Events from a queue of its own, so one can arrive after the status it accompanies."""
        return wait_for(lambda: (events := self.events(name)) and any(match(e) for e in events) and events,
                        timeout=timeout, what=what)


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


def owned_by(obj, owner: dict[str, Any]) -> bool:
    refs = obj.metadata.owner_references or []
    return any(r.uid == owner["metadata"]["uid"] and r.controller for r in refs)


def read_or_none(reader, name: str, namespace: str):
    try:
        return reader(name, namespace)
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise


def served(api_client, group_version: str, plural: str) -> bool:
    """Whether the API server serves `plural` in `group_version` now (discovery)."""
    group, version = group_version.split("/")
    try:
        resources = client.CustomObjectsApi(api_client).get_api_resources(group, version).resources
    except client.ApiException as err:
        if err.status == 404:
            return False
        raise
    return any(r.name == plural for r in resources)


@contextmanager
def crds_served(api_client, paths: list[Path], group_version: str) -> Iterator[None]:
    """Other projects' CRDs, served while the block runs and removed afterwards, so that other modules meet a
    cluster without them. The operator runs in this process (KopfRunner): its discovery answers, cached up to
    kube.DISCOVERY_TTL, are dropped when the CRDs come and go."""
    from mlcycle_operator import kube

    ext = client.ApiextensionsV1Api(api_client)
    crds = [yaml.safe_load(path.read_text()) for path in paths]
    for crd in crds:
        # Large schemas (KubeRay's is 1.3 MB): sent and read raw, the client's model classes take seconds.
        try:
            ext.create_custom_resource_definition(crd, _preload_content=False)
        except client.ApiException as err:
            if err.status != 409:  # left by an interrupted run on a reused cluster: the same CRD, use it
                raise
    plurals = [crd["spec"]["names"]["plural"] for crd in crds]
    wait_for(lambda: all(served(api_client, group_version, p) for p in plurals), timeout=30,
             what=f"the API server to serve {group_version} {', '.join(plurals)}")
    kube.forget_discovery()
    try:
        yield
    finally:
        for crd in crds:
            ext.delete_custom_resource_definition(crd["metadata"]["name"], _preload_content=False)
        wait_for(lambda: not any(served(api_client, group_version, p) for p in plurals), timeout=60,
                 what=f"{group_version} {', '.join(plurals)} to be gone")
        kube.forget_discovery()


def missing(built: Any, stored: Any, path: str = "spec") -> list[str]:
    """Paths the builder set that the API server did not keep (a schema that prunes unknown fields)."""
    if isinstance(built, dict):
        if not isinstance(stored, dict):
            return [path]
        return [p for k, v in built.items() for p in missing(v, stored.get(k), f"{path}.{k}")]
    if isinstance(built, list):
        if not isinstance(stored, list) or len(stored) != len(built):
            return [path]
        return [p for i, (b, s) in enumerate(zip(built, stored, strict=True)) for p in missing(b, s, f"{path}[{i}]")]
    return [] if built == stored else [path]


def bind_models_volume(core: client.CoreV1Api, namespace: str) -> str:
    """A PersistentVolume bound in advance to the example project's pvc://churn-models claim in `namespace`: the
    test clusters have no provisioner, so the real PV controller binds it, as for an administrator's volume.
    Returns its name (the caller deletes it: volumes are cluster-wide)."""
    pv = f"models-{namespace}"[:63]
    core.create_persistent_volume(client.V1PersistentVolume(
        metadata=client.V1ObjectMeta(name=pv),
        spec=client.V1PersistentVolumeSpec(
            capacity={"storage": "10Gi"}, access_modes=["ReadWriteMany"],
            host_path=client.V1HostPathVolumeSource(path=f"/tmp/{pv}"),
            persistent_volume_reclaim_policy="Retain",
            claim_ref=client.V1ObjectReference(namespace=namespace, name="churn-models"))))
    return pv

"""Helpers for integration tests that drive mlcycle resources through the real API."""

from __future__ import annotations

import time
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
           "ModelDeployment": "modeldeployments", "DriftMonitor": "driftmonitors"}


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

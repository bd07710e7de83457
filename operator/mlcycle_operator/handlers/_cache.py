"""What the operator last saw, kept by Kopf indexes from its watch streams: its Deployments and Jobs, its
projects, and a summary of every TrainingJob, ModelDeployment and DriftMonitor.

Reconciling then reads these from memory: a cached child that matches is left without a request, and only one
that differs is patched. Without this, every reconcile and every training job's progress check cost reads, and
a thousand deployments or jobs kept the API server busy with them. Kopf fills every index from a full listing
before any handler runs, and keeps it current from the same watches. What the cache says can lag by a moment,
which is safe: an object missing from it is created and a 409 falls back to a read; one that looks different is
re-applied with server-side apply, which is idempotent.

Children are kept as compact JSON text (managedFields dropped), parsed on use.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import kopf

from .. import kube
from ..api.common import API_VERSION, GROUP, VERSION
from ..kube import UNKNOWN
from ..resources.common import MANAGED_BY

MANAGED = {"app.kubernetes.io/managed-by": MANAGED_BY}

# Children by kind: the kinds whose status the operator reads (servers becoming available, training Jobs
# progressing, autoscalers able to scale), so that reading them costs no request. Other children are not
# watched: only a reconcile of an existing object reads them, and a new object's children are created without
# reading (_children.apply_owned).
CHILD_KINDS = {
    "Deployment": ("apps", "v1", "deployments"),
    "Job": ("batch", "v1", "jobs"),
    "HorizontalPodAutoscaler": ("autoscaling", "v2", "horizontalpodautoscalers"),  # whether they can scale
}


def _index_id(plural: str) -> str:
    return f"cache_{plural}"


# The indexers are coroutines: Kopf runs a plain function in its handler threads, and every event of every
# cached object then waited for a thread that the reconciles keep busy with API calls, while the events queued in
# memory (measured: hundreds of MiB of resident memory with a thousand deployments). These only compute.
async def _index_child(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[Any, str]:
    """One child under its (namespace, name) and under each owner's uid (to find an owner's children)."""
    metadata = {k: v for k, v in body["metadata"].items() if k != "managedFields"}
    text = json.dumps({**body, "metadata": metadata}, separators=(",", ":"))
    keys: dict[Any, str] = {(namespace, name): text}
    for ref in metadata.get("ownerReferences") or []:
        keys[ref["uid"]] = text
    return keys


for _group, _version, _plural in CHILD_KINDS.values():
    kopf.index(_group or None, _version, _plural, labels=MANAGED, id=_index_id(_plural))(_index_child)


@kopf.index(GROUP, VERSION, "mlprojects", id="cache_projects")
async def _index_project(namespace: str, name: str, spec: kopf.Spec, status: kopf.Status, **_: Any) -> dict[Any, Any]:
    return {(namespace, name): {"spec": dict(spec), "status": dict(status or {})}}


def _summary(kind: str, body: kopf.Body) -> dict[str, Any]:
    """What other kinds read of an object: enough to count, pick the tracked model and name the champion."""
    spec, status, meta = body.get("spec") or {}, body.get("status") or {}, body["metadata"]
    summary = {"kind": kind, "name": meta["name"], "labels": dict(meta.get("labels") or {}),
               "created": meta.get("creationTimestamp") or "", "project": spec.get("project"),
               "phase": status.get("phase")}
    if kind == "TrainingJob":
        summary.update(modelName=(spec.get("output") or {}).get("modelName"), gatesPassed=status.get("gatesPassed"),
                       model=status.get("model"), completionTime=status.get("completionTime"))
    elif kind == "ModelDeployment":
        model = spec.get("model") or {}
        summary.update(modelName=model.get("name"), tracking=model.get("track") is not None,
                       stableVersion=status.get("stableVersion"), modelUri=status.get("modelUri"),
                       trainingJob=status.get("trainingJob"))
    return summary


def _member_indexer(kind: str):
    async def index(body: kopf.Body, namespace: str, **_: Any) -> dict[Any, Any]:
        return {(kind, namespace, (body.get("spec") or {}).get("project")): _summary(kind, body)}
    return index


# The mlcycle kinds other handlers read (counts, tracked models, the champion), as summaries.
MEMBER_KINDS = {"TrainingJob": "trainingjobs", "ModelDeployment": "modeldeployments", "DriftMonitor": "driftmonitors"}
for _kind, _plural in MEMBER_KINDS.items():
    kopf.index(GROUP, VERSION, _plural, id=_index_id(_plural))(_member_indexer(_kind))


class Cache:
    """Read-only lookups over the indexes Kopf passes to every handler (as keyword arguments named by id)."""

    def __init__(self, kwargs: Mapping[str, Any]):
        self._children = {kind: kwargs.get(_index_id(plural)) for kind, (_, _, plural) in CHILD_KINDS.items()}
        self._projects = kwargs.get("cache_projects")
        self._members = {kind: kwargs.get(_index_id(plural)) for kind, plural in MEMBER_KINDS.items()}

    def child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | Any | None:
        """The child as last seen; None when it does not exist; UNKNOWN when this kind is not cached."""
        index = self._children.get(kind)
        if index is None:
            return UNKNOWN
        store = index.get((namespace, name))
        return json.loads(next(iter(store))) if store else None

    def read(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The child as last seen, or as the API server has it when this kind is not cached."""
        found = self.child(kind, namespace, name)
        return kube.get(api_version, kind, namespace, name) if found is UNKNOWN else found

    def cached(self, kind: str) -> bool:
        return self._children.get(kind) is not None

    def owned(self, kind: str, owner_uid: str) -> Iterator[dict[str, Any]]:
        """The children of one kind whose owner references name this uid."""
        index = self._children.get(kind)
        for text in (index.get(owner_uid) or ()) if index is not None else ():
            yield json.loads(text)

    def project(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The MLProject's spec and status; read from the API when the cache has not seen it (yet)."""
        store = self._projects.get((namespace, name)) if self._projects is not None else None
        if store:
            return next(iter(store))
        return kube.get(API_VERSION, "MLProject", namespace, name)

    def members(self, kind: str, namespace: str, project: str) -> list[dict[str, Any]]:
        """Summaries of the objects of one kind that belong to a project."""
        index = self._members[kind]
        return list(index.get((kind, namespace, project)) or ()) if index is not None else []

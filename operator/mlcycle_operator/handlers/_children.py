"""What every handler does with its children: own them, apply them, and say what changed in an Event."""

from __future__ import annotations

from typing import Any

import kopf

from .. import conditions as cond
from .. import kube
from ..metrics import CHILD_WRITES
from ..resources.compare import Action
from . import _events
from ._cache import Cache


def first_reconcile(body: kopf.Body) -> bool:
    """Whether the operator never finished a reconcile of this object (its status has no observedGeneration):
    then its children almost surely do not exist yet."""
    return not (body.get("status") or {}).get("observedGeneration")


def apply_owned(body: kopf.Body, children: list[dict[str, Any]], cache: Cache, *, owned: bool = True,
                unannounced: frozenset[str] = frozenset()) -> list[str]:
    """Apply each child with an owner reference to `body` (so the garbage collector removes it with its owner),
    comparing with what the cache last saw of it; return 'Created Kind/name' lines for what changed, and post them
    as one Event, less updates of the `unannounced` 'Kind/name's (an Event of the caller's says why they changed).
    A child the cache does not keep is read first, except on the object's first reconcile: then it is created
    without a read (a 409 falls back to one), which halves the requests when a thousand objects arrive at once."""
    changes = []
    fresh = first_reconcile(body)
    for child in children:
        if owned:
            kopf.append_owner_reference(child, owner=body)
        meta = child["metadata"]
        existing = cache.child(child["kind"], meta.get("namespace"), meta["name"])
        if existing is kube.UNKNOWN and fresh:
            existing = None
        action = kube.apply(child, existing)
        if action is not Action.UNCHANGED:
            CHILD_WRITES.labels(child["kind"], action.value).inc()
            changes.append(f"{'Created' if action is Action.CREATE else 'Updated'} "
                           f"{child['kind']}/{meta['name']}")
    announced = [c for c in changes if not (c.startswith("Updated ") and c.split(" ", 1)[1] in unannounced)]
    if announced:
        _events.normal(body, cond.Reason.CHILDREN_APPLIED, "; ".join(announced))
    return changes


def owned(body: kopf.Body, cache: Cache, api_version: str, kind: str, namespace: str,
          selector: dict[str, str]) -> list[dict[str, Any]]:
    """The children of one kind that this object owns and that carry every label in `selector`."""
    uid = body["metadata"]["uid"]
    if cache.cached(kind):
        items = list(cache.owned(kind, uid))
    else:
        label_selector = ",".join(f"{k}={v}" for k, v in selector.items())
        items = [item for item in kube.list_objects(api_version, kind, namespace, label_selector)
                 if any(ref.get("uid") == uid for ref in item["metadata"].get("ownerReferences") or [])]
    return [item for item in items
            if all((item["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())]


def prune(body: kopf.Body, cache: Cache, api_version: str, kind: str, namespace: str, selector: dict[str, str],
          keep: set[str]) -> list[str]:
    """Delete children of one kind that match the selector but are no longer desired."""
    removed = []
    for item in owned(body, cache, api_version, kind, namespace, selector):
        name = item["metadata"]["name"]
        if name not in keep and kube.delete(api_version, kind, namespace, name):
            removed.append(f"{kind}/{name}")
    if removed:
        _events.normal(body, cond.Reason.CHILDREN_REMOVED, "Deleted " + ", ".join(removed))
    return removed

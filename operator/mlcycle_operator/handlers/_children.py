"""What every handler does with its children: own them, apply them, and say what changed in an Event."""

from __future__ import annotations

from typing import Any

import kopf

from .. import kube
from ..metrics import CHILD_WRITES
from ..resources.compare import Action
from . import _events


def apply_owned(body: kopf.Body, children: list[dict[str, Any]], *, owned: bool = True) -> list[str]:
    """Apply each child with an owner reference to `body` (so the garbage collector removes it with its
    owner); return 'Created Kind/name' lines for what changed."""
    changes = []
    for child in children:
        if owned:
            kopf.append_owner_reference(child, owner=body)
        action = kube.apply(child)
        if action is not Action.UNCHANGED:
            CHILD_WRITES.labels(child["kind"], action.value).inc()
            changes.append(f"{'Created' if action is Action.CREATE else 'Updated'} "
                           f"{child['kind']}/{child['metadata']['name']}")
    if changes:
        _events.normal(body, "ChildrenApplied", "; ".join(changes))
    return changes


def prune(body: kopf.Body, api_version: str, kind: str, namespace: str, selector: str,
          keep: set[str]) -> list[str]:
    """Delete children of one kind that match the selector but are no longer desired."""
    removed = []
    for item in kube.list_objects(api_version, kind, namespace, selector):
        name = item["metadata"]["name"]
        owners = item["metadata"].get("ownerReferences") or []
        ours = any(ref.get("uid") == body["metadata"]["uid"] for ref in owners)
        if ours and name not in keep and kube.delete(api_version, kind, namespace, name):
            removed.append(f"{kind}/{name}")
    if removed:
        _events.normal(body, "ChildrenRemoved", "Deleted " + ", ".join(removed))
    return removed

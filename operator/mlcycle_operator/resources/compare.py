"""Desired vs existing: which action a child needs (the KServe CheckResult idea, without the I/O)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Action(StrEnum):
    """What applying a desired manifest would do."""

    CREATE = "Create"
    UPDATE = "Update"
    UNCHANGED = "Unchanged"


# Fields the API server or controllers own; never compared.
_IGNORED_METADATA = {"ownerReferences", "resourceVersion", "uid", "creationTimestamp", "generation",
                     "managedFields", "selfLink", "finalizers"}


def action_for(desired: dict[str, Any], existing: dict[str, Any] | None) -> Action:
    """CREATE when absent; UPDATE when anything we set differs; UNCHANGED when ours is a subset of theirs."""
    if existing is None:
        return Action.CREATE
    desired = {k: v for k, v in desired.items() if k != "status"}
    desired_meta = {k: v for k, v in desired.get("metadata", {}).items() if k not in _IGNORED_METADATA}
    if not is_subset(desired_meta, existing.get("metadata", {})):
        return Action.UPDATE
    rest = {k: v for k, v in desired.items() if k not in ("metadata", "apiVersion", "kind")}
    return Action.UNCHANGED if is_subset(rest, existing) else Action.UPDATE


def is_subset(desired: Any, existing: Any) -> bool:
    """True when every value in desired appears in existing (server defaults may add more)."""
    if isinstance(desired, dict):
        if not isinstance(existing, dict):
            return False
        # The API server omits empty lists and maps (`envFrom: []`): absent there is what empty asked for.
        return all(is_subset(value, existing[key]) if key in existing else value in ([], {})
                   for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(existing, list) or len(desired) != len(existing):
            return False
        return all(is_subset(d, e) for d, e in zip(desired, existing, strict=True))
    numbers = (int, float)
    if (isinstance(desired, str) and isinstance(existing, numbers) and not isinstance(existing, bool)) or (
            isinstance(existing, str) and isinstance(desired, numbers) and not isinstance(desired, bool)):
        # Quantities round-trip as strings ("1" vs 1); compare their text.
        return str(desired) == str(existing)
    return desired == existing

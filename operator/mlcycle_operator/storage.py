"""An MLProject's model-store claim in words: what an existing claim can take, and why one is not bound. Pure:
the handler reads the claim and its Events; this decides."""

from __future__ import annotations

from typing import Any

from . import conditions as cond
from .diagnose import Problem
from .units import parse_quantity

# Why a claim stays Pending is said only in Events about it: the provisioner's (ProvisioningFailed, a Warning)
# or the volume controller's (FailedBinding, a Normal Event that means no volume will ever come).
CLAIM_FAILURE_REASONS = ("ProvisioningFailed", "FailedBinding")


def _modes(claim: dict[str, Any]) -> list[str]:
    return list((claim.get("spec") or {}).get("accessModes") or [])


def claim_changes(desired: dict[str, Any], existing: dict[str, Any]) -> list[str]:
    """What the project asks of its claim that the claim which exists does not have, in words. Access modes and
    class are fixed when a claim is created; a size can only grow (where the class allows expansion)."""
    changes = []
    want, have = desired.get("spec") or {}, existing.get("spec") or {}
    if sorted(_modes(desired)) != sorted(_modes(existing)):
        changes.append(f"access mode {', '.join(_modes(desired))} (the claim has {', '.join(_modes(existing))})")
    if want.get("storageClassName") and want["storageClassName"] != have.get("storageClassName"):
        changes.append(f"storage class {want['storageClassName']} (the claim has "
                       f"{have.get('storageClassName') or 'none'})")
    size = ((want.get("resources") or {}).get("requests") or {}).get("storage")
    held = ((have.get("resources") or {}).get("requests") or {}).get("storage")
    if size and held and parse_quantity(size) < parse_quantity(held):
        changes.append(f"size {size} (the claim has {held}; a claim cannot shrink)")
    return changes


def observe_claim(desired: dict[str, Any], claim: dict[str, Any] | None,
                  events: list[dict[str, Any]]) -> tuple[dict[str, Any], list[Problem]]:
    """An MLProject's model-store claim as status (`storage`), and the problems a person must act on: a claim
    that will not bind (in the provisioner's words), a lost volume, a spec the claim cannot take. `events` are
    the claim's Events, in any order."""
    name = desired["metadata"]["name"]
    if claim is None:
        return {"claim": name, "phase": "Pending", "message": "being created"}, []
    phase = (claim.get("status") or {}).get("phase") or "Pending"
    modes = ", ".join(_modes(claim))
    status: dict[str, Any] = {"claim": name, "phase": phase}
    problems: list[Problem] = []
    changes = claim_changes(desired, claim)
    if changes:
        problems.append(Problem(cond.Reason.STORAGE_SPEC_IMMUTABLE,
                                f"claim {name} cannot take spec.storage.pvc's {'; '.join(changes)}: a claim's "
                                "access modes and class are fixed when it is made. Set spec.storage.pvc back, or "
                                "delete the claim (the models in it go with it) and the operator makes it anew",
                                False))
    volume = (claim.get("spec") or {}).get("volumeName")
    if phase == "Bound":
        status["message"] = f"bound to volume {volume} ({modes})" if volume else f"bound ({modes})"
    elif phase == "Lost":
        status["message"] = f"lost volume {volume}"
        problems.append(Problem(cond.Reason.STORAGE_NOT_BOUND, f"claim {name} lost volume {volume}: the models in it "
                                "cannot be read; restore the volume, or delete the claim", True))
    else:
        # A failing provisioner alternates its failure with Normal "Provisioning"/"ExternalProvisioning" Events: while
        # the claim is Pending, its latest failure says more than its latest Event.
        failures = [e for e in events if e.get("type") == "Warning" or e.get("reason") in CLAIM_FAILURE_REASONS]
        latest = max(failures or events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime")
                     or (e.get("metadata") or {}).get("creationTimestamp") or "", default=None)
        said = f"{latest.get('reason')}: {(latest.get('message') or '').strip()}" if latest else ""
        status["message"] = said or "waiting for a volume"
        if failures:
            hint = ""
            if "ReadWriteMany" in _modes(claim) and "access mode" in said.lower():
                hint = (". This storage class cannot share a volume between nodes (kind's local-path binds "
                        "ReadWriteOnce only): use a class that provides ReadWriteMany (NFS, CephFS, EFS), or set "
                        "spec.storage.pvc.accessMode: ReadWriteOnce (the project's pods then run on the claim's "
                        "node) and delete this claim, whose access mode cannot change")
            problems.append(Problem(cond.Reason.STORAGE_NOT_BOUND, f"claim {name} ({modes}) is not bound: {said}{hint}",
                                    False))
    return status, problems

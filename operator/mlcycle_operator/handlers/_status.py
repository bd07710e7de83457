"""Status is computed on a copy, then written once: only the keys that changed go into the patch."""

from __future__ import annotations

from typing import Any, TypeVar

import kopf
from pydantic import BaseModel, ValidationError

from .. import conditions as cond
from . import _events

M = TypeVar("M", bound=BaseModel)


def write(patch: kopf.Patch, old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Put into `patch.status` every top-level key whose value differs; True if anything changed."""
    old = old or {}
    changed = False
    for key, value in new.items():
        if old.get(key) != value:
            patch.status[key] = value
            changed = True
    return changed


def parse_spec(model: type[M], spec: dict[str, Any], body: kopf.Body, patch: kopf.Patch,
               status: dict[str, Any] | None) -> M:
    """The spec as its pydantic model; a spec the models refuse can never work, so it fails permanently
    with a Degraded condition that says which field."""
    try:
        return model.model_validate(dict(spec))
    except ValidationError as err:
        problems = "; ".join(f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        generation = body["metadata"].get("generation")
        conditions = cond.set_condition(list((status or {}).get("conditions", [])), cond.DEGRADED, True,
                                        cond.Reason.INVALID_SPEC, problems, generation)
        write(patch, status, {"conditions": conditions, "observedGeneration": generation})
        _events.warning(body, cond.Reason.INVALID_SPEC, problems)
        raise kopf.PermanentError(problems) from err


def waiting_for(body: kopf.Body, patch: kopf.Patch, status: dict[str, Any] | None, condition: str, reason: cond.Reason,
                message: str) -> None:
    """A dependency (project, deployment) is missing: say so in phase Pending, a False condition and, when
    that is news, a Warning Event."""
    generation = body["metadata"].get("generation")
    conditions = cond.set_condition(list((status or {}).get("conditions", [])), condition, False, reason, message,
                                    generation)
    if write(patch, status, {"phase": "Pending", "conditions": conditions, "observedGeneration": generation}):
        _events.warning(body, reason, message)


def project_or_wait(body: kopf.Body, patch: kopf.Patch, status: dict[str, Any] | None, project: dict | None,
                    name: str, namespace: str) -> dict:
    """The MLProject a run needs; while it is missing, say so (Progressing False) and retry in 15 s."""
    if project is None:
        message = f"MLProject {name} does not exist in namespace {namespace}; waiting for it"
        waiting_for(body, patch, status, cond.PROGRESSING, cond.Reason.PROJECT_NOT_FOUND, message)
        raise kopf.TemporaryError(message, delay=15)
    return project

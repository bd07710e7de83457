"""Events for transitions. Posted directly, not through Kopf's log-to-Event bridge, which is set to warnings
only so that per-handler log lines do not become Events (see settings.py)."""

from __future__ import annotations

import kopf


def normal(body: kopf.Body, reason: str, message: str) -> None:
    kopf.event(body, type="Normal", reason=reason, message=message)


def warning(body: kopf.Body, reason: str, message: str) -> None:
    kopf.event(body, type="Warning", reason=reason, message=message)

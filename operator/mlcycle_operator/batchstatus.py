"""A BatchPrediction's status from what its scorer reported (`status.report`) and what its Job and pods show. Pure:
the handler fetches; this decides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import conditions as cond
from .diagnose import REPORT_GRACE_SECONDS, Problem, _seconds_between, job_completed_at, pod_problems

TERMINAL = ("Succeeded", "Failed")
MEMORY_HINT = "raise spec.resources.memory (or lower spec.batchSize)"
# The run's fields of a report, copied into status as they are.
RUN_FIELDS = ("runId", "modelVersion", "rowsScored", "rowsRefused", "rowsPerSecond", "startTime", "completionTime",
              "durationSeconds")


@dataclass
class BatchObservation:
    """The new status fields and the Events to post."""

    status: dict[str, Any]
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type Normal|Warning, reason, message)


def job_failure(job: dict[str, Any] | None) -> Problem | None:
    """A run's Job failed: past its deadline, or its pod failed (every retry)."""
    for c in ((job or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == "Failed" and c.get("status") == "True":
            name = job["metadata"]["name"]
            if c.get("reason") == "DeadlineExceeded":
                return Problem(cond.Reason.DEADLINE_EXCEEDED,
                               f"run {name} ran past spec.activeDeadline and was stopped", True)
            return Problem(cond.Reason.SCORING_FAILED, f"run {name} failed: {c.get('reason')}: "
                           f"{c.get('message', '')}".strip(" :"), True)
    return None


def run_fields(report: dict[str, Any]) -> dict[str, Any]:
    """What status says about the run a report describes (its output only once published)."""
    fields = {key: report[key] for key in RUN_FIELDS if report.get(key) is not None}
    if report.get("phase") == "Succeeded":
        fields.update(output=report.get("output"), fingerprint=report.get("fingerprint"))
    return fields


def succeeded_message(report: dict[str, Any]) -> str:
    model = report.get("model") or {}
    return (f"scored {report.get('rowsScored', 0):,} rows ({report.get('rowsRefused', 0):,} refused) with "
            f"{model.get('name')} version {report.get('modelVersion') or model.get('version')} at "
            f"{report.get('rowsPerSecond', 0):,.0f} rows/s into {report.get('output')}")


def _problems(report: dict[str, Any], job: dict[str, Any] | None, pods: list[dict[str, Any]],
              now: str) -> list[Problem]:
    problems = pod_problems(pods, MEMORY_HINT)
    failure = job_failure(job)
    if failure is not None:
        problems.append(failure)
    if report.get("phase") == "Failed" and report.get("error"):
        problems.append(Problem(cond.Reason.SCORING_FAILED, str(report["error"])[:2000], True))
    completed = job_completed_at(job)
    if (completed is not None and report.get("phase") not in TERMINAL
            and _seconds_between(completed, now) >= REPORT_GRACE_SECONDS):
        problems.append(Problem(cond.Reason.SCORING_FAILED, "the scorer exited without reporting a result", True))
    return problems


def _degraded(conditions: list[dict[str, Any]], old: dict[str, Any], problems: list[Problem],
              generation: int | None, events: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    if problems:
        worst = next((p for p in problems if p.fatal), problems[0])
        message = "; ".join(p.message for p in problems)
        before = cond.get_condition(old.get("conditions"), cond.DEGRADED) or {}
        if before.get("status") != "True" or before.get("message") != message:
            events.append(("Warning", worst.reason, worst.message))
        return cond.set_condition(conditions, cond.DEGRADED, True, worst.reason, message, generation)
    if cond.is_true(conditions, cond.DEGRADED):
        return cond.set_condition(conditions, cond.DEGRADED, False, cond.Reason.RECOVERED, "", generation)
    return conditions


def observe_run(old: dict[str, Any], job: dict[str, Any] | None, pods: list[dict[str, Any]],
                generation: int | None, now: str) -> BatchObservation:
    """A one-shot BatchPrediction: Pending -> Running -> Succeeded or Failed, from its report and its Job."""
    phase = old.get("phase") or "Pending"
    if phase in TERMINAL:
        return BatchObservation({})
    report = old.get("report") or {}
    new: dict[str, Any] = {"observedGeneration": generation, **run_fields(report)}
    events: list[tuple[str, str, str]] = []
    if report.get("phase") in ("Running", *TERMINAL):
        phase = report["phase"]
    problems = _problems(report, job, pods, now)
    if any(p.fatal for p in problems):
        phase = "Failed"
    conditions = _degraded(list(old.get("conditions") or []), old, problems, generation, events)
    running = phase not in TERMINAL
    reason = {"Pending": cond.Reason.PENDING, "Running": cond.Reason.RUNNING}.get(phase, cond.Reason.FINISHED)
    rows = f": {report.get('rowsScored', 0):,} rows scored" if report.get("rowsScored") is not None else ""
    conditions = cond.set_condition(conditions, cond.PROGRESSING, running, reason, f"phase {phase}{rows}", generation)
    if old.get("phase") != phase:
        events.insert(0, ("Normal", cond.Reason.PHASE_CHANGED, f"{old.get('phase') or 'Pending'} -> {phase}"))
    if phase == "Succeeded":
        events.append(("Normal", cond.Reason.SUCCEEDED, succeeded_message(report)))
    elif phase == "Failed":
        events.append(("Warning", cond.Reason.FAILED, "; ".join(p.message for p in problems)
                       or "the scorer reported failure"))
    if not running:
        new.setdefault("completionTime", now)
    new.update(phase=phase, conditions=conditions)
    return BatchObservation(new, events)


def observe_schedule(old: dict[str, Any], cron_job: dict[str, Any] | None, newest_job: dict[str, Any] | None,
                     pods: list[dict[str, Any]], generation: int | None, now: str) -> BatchObservation:
    """A scheduled BatchPrediction stays Scheduled; each run's report fills the run fields, with an Event when it
    ends, and a failed run (reported, or its Job failed) is Degraded until a later run succeeds."""
    report = old.get("report") or {}
    new: dict[str, Any] = {"observedGeneration": generation, "phase": "Scheduled"}
    events: list[tuple[str, str, str]] = []
    last_schedule = ((cron_job or {}).get("status") or {}).get("lastScheduleTime")
    if last_schedule:
        new["lastScheduleTime"] = last_schedule
    # A report not yet copied into status: its run ended since the last look.
    finished_run = report.get("phase") in TERMINAL and (report.get("runId"), report.get("completionTime")) != (
        old.get("runId"), old.get("completionTime"))
    if report.get("runId"):
        new.update(run_fields(report))
        # Output and fingerprint belong to one run: a newer run that has not published clears them.
        if report.get("phase") != "Succeeded":
            new.update(output=None, fingerprint=None)
    if finished_run and report["phase"] == "Succeeded":
        events.append(("Normal", cond.Reason.SUCCEEDED, f"run {report['runId']}: {succeeded_message(report)}"))
    # A Job that failed after the last report's run, or the report's own failure.
    job_done = newest_job is not None and (job_failure(newest_job) is not None
                                           or job_completed_at(newest_job) is not None)
    problems = _problems(report, newest_job if job_done else None, pods, now)
    if report.get("phase") == "Succeeded" and job_failure(newest_job) is None:
        problems = [p for p in problems if p.reason != cond.Reason.SCORING_FAILED]
    conditions = _degraded(list(old.get("conditions") or []), old, problems, generation, events)
    return BatchObservation({**new, "conditions": conditions}, events)

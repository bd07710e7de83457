"""Turn what the cluster shows about a workload, and what the trainer reported, into status in words: a
TrainingJob's phase and conditions, and what keeps a ModelDeployment's servers from running. Pure: the handler
fetches; this decides."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import conditions as cond

TERMINAL = ("Succeeded", "Failed")
RUNTIME_PHASES = ("ValidatingData", "Training", "Evaluating", "Succeeded", "Failed")
# Progressing True names the phase a job is in (a phase not listed, which only an edit of status could give, as is).
PHASE_REASONS = {r.value: r for r in (cond.Reason.PENDING, cond.Reason.VALIDATING_DATA, cond.Reason.TRAINING,
                                      cond.Reason.EVALUATING)}


@dataclass(frozen=True)
class Problem:
    """Something a user can act on, found in the workload's pods or the Job itself."""

    reason: cond.Reason
    message: str
    fatal: bool  # the run cannot recover by itself


@dataclass
class TrainingObservation:
    """The new TrainingJob status fields and the Events to post for this observation."""

    status: dict[str, Any]
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type Normal|Warning, reason, message)


TRAINING_MEMORY_HINT = "raise distribution.memoryPerWorker"
# The reasons pod_problems and autoscaler_problems give: a condition with one of them lasts only as long as the
# pods (or the autoscalers) show it.
POD_REASONS = (cond.Reason.IMAGE_PULL_FAILED, cond.Reason.UNSCHEDULABLE, cond.Reason.OOM_KILLED,
               cond.Reason.AUTOSCALING_INACTIVE)


def pod_problems(pods: list[dict[str, Any]], memory_hint: str = TRAINING_MEMORY_HINT) -> list[Problem]:
    """Image pull failures, unschedulable pods and OOM kills, in words (`memory_hint`: the field to raise)."""
    problems: list[Problem] = []
    for pod in pods:
        name = pod["metadata"]["name"]
        status = pod.get("status") or {}
        for c in status.get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
                problems.append(Problem(cond.Reason.UNSCHEDULABLE,
                                        f"pod {name} cannot be scheduled: {c.get('message', '')}".strip(), False))
        for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
                problems.append(Problem(cond.Reason.IMAGE_PULL_FAILED, f"image {cs.get('image')} of pod {name} cannot "
                                        f"be pulled: {waiting.get('message') or waiting['reason']}", False))
            for state in ((cs.get("state") or {}).get("terminated"), (cs.get("lastState") or {}).get("terminated")):
                if state and state.get("reason") == "OOMKilled":
                    limit = next((c.get("resources", {}).get("limits", {}).get("memory")
                                  for c in (pod.get("spec") or {}).get("containers") or []
                                  if c.get("name") == cs.get("name")), None)
                    problems.append(Problem(cond.Reason.OOM_KILLED, f"container {cs.get('name')} of pod {name} ran out "
                                            f"of memory (OOMKilled at its limit of {limit or 'no limit'}): "
                                            f"{memory_hint}", True))
                    break
    return problems


# A new version's autoscaler has no metrics until metrics-server has scraped its pods (about a minute): only a
# condition that lasts longer than this is a problem worth a Warning.
AUTOSCALER_GRACE_SECONDS = 120


def autoscaler_problems(autoscalers: list[dict[str, Any]], now: str) -> list[Problem]:
    """Autoscalers that cannot scale, in their controller's words, once that has lasted AUTOSCALER_GRACE_SECONDS:
    most often no resource metrics API in the cluster (metrics-server not installed), so the servers stay at
    their minimum under any load. A target at zero replicas (ScalingDisabled) is no problem."""
    problems = []
    for hpa in autoscalers:
        for c in (hpa.get("status") or {}).get("conditions") or []:
            if (c.get("type") in ("ScalingActive", "AbleToScale") and c.get("status") == "False"
                    and c.get("reason") != "ScalingDisabled"
                    and _seconds_between(c.get("lastTransitionTime") or "", now) >= AUTOSCALER_GRACE_SECONDS):
                problems.append(Problem(cond.Reason.AUTOSCALING_INACTIVE, f"autoscaler {hpa['metadata']['name']} "
                                        f"cannot scale ({c.get('reason')}): {(c.get('message') or '').strip()}",
                                        False))
                break
    return problems


def job_failure(job: dict[str, Any] | None) -> Problem | None:
    """The workload's own verdict: deadline exceeded or failed (batch Job conditions, or a RayJob's status)."""
    status = (job or {}).get("status") or {}
    if (job or {}).get("kind") == "RayJob":
        if status.get("jobDeploymentStatus") == "Failed" or status.get("jobStatus") == "FAILED":
            if status.get("reason") == "DeadlineExceeded":
                return Problem(cond.Reason.DEADLINE_EXCEEDED, "training ran past spec.activeDeadline and was stopped",
                               True)
            return Problem(cond.Reason.TRAINING_FAILED, f"the RayJob failed: {status.get('reason', '')}: "
                           f"{status.get('message', '')}".strip(" :"), True)
        return None
    for c in status.get("conditions") or []:
        if c.get("type") == "Failed" and c.get("status") == "True":
            if c.get("reason") == "DeadlineExceeded":
                return Problem(cond.Reason.DEADLINE_EXCEEDED, "training ran past spec.activeDeadline and was stopped",
                               True)
            return Problem(cond.Reason.TRAINING_FAILED, f"the training workload failed: {c.get('reason')}: "
                           f"{c.get('message', '')}".strip(), True)
    return None


# How long after the workload completes a missing report counts as "exited without reporting": the
# trainer's last status patch and the Job controller's Complete condition are not ordered.
REPORT_GRACE_SECONDS = 10.0


def job_completed_at(job: dict[str, Any] | None) -> str | None:
    """When the workload completed successfully (a Job's Complete condition, a RayJob's endTime), else None."""
    status = (job or {}).get("status") or {}
    if (job or {}).get("kind") == "RayJob":
        done = status.get("jobDeploymentStatus") == "Complete" and status.get("jobStatus") == "SUCCEEDED"
        return (status.get("endTime") or "") if done else None
    for c in status.get("conditions") or []:
        if c.get("type") == "Complete" and c.get("status") == "True":
            return c.get("lastTransitionTime") or ""
    return None


def _seconds_between(earlier: str, later: str) -> float:
    if not earlier:
        return float("inf")
    start = datetime.fromisoformat(earlier.replace("Z", "+00:00"))
    return (datetime.fromisoformat(later.replace("Z", "+00:00")) - start).total_seconds()


def observe_training(old: dict[str, Any], job: dict[str, Any] | None, pods: list[dict[str, Any]],
                     generation: int | None, now: str) -> TrainingObservation:
    """Phase, conditions and results from the runtime's status.result and the workload's state."""
    result = old.get("result") or {}
    conditions = list(old.get("conditions") or [])
    new: dict[str, Any] = {"observedGeneration": generation}
    events: list[tuple[str, str, str]] = []
    phase = old.get("phase") or "Pending"
    if phase in TERMINAL:
        return TrainingObservation({})

    reported = result.get("phase")
    if reported in RUNTIME_PHASES:
        phase = reported
    for key in ("trials", "model", "metrics", "baselines", "gates", "slices", "lineage"):
        if result.get(key) is not None:
            new[key] = result[key]

    validation = result.get("validation")
    if validation is not None:
        valid = bool(validation.get("passed"))
        violations = validation.get("violations") or []
        message = "data passed validation" if valid else "bad data: " + "; ".join(
            v if isinstance(v, str) else v.get("message", str(v)) for v in violations[:20])
        conditions = cond.set_condition(conditions, cond.DATA_VALID, valid,
                                        cond.Reason.VALIDATED if valid else cond.Reason.BAD_DATA, message, generation)
        if not valid:
            phase = "Failed"
            more = f" (and {len(violations) - 20} more)" if len(violations) > 20 else ""
            validation_problem = Problem(cond.Reason.BAD_DATA, message + more, True)

    problems = pod_problems(pods)
    if validation is not None and not validation.get("passed"):
        problems.append(validation_problem)
    failure = job_failure(job)
    if failure is not None:
        problems.append(failure)
    if reported == "Failed" and result.get("error"):
        problems.append(Problem(cond.Reason.TRAINING_FAILED, str(result["error"])[:2000], True))
    if any(p.fatal for p in problems) and phase not in TERMINAL:
        phase = "Failed"
    completed = job_completed_at(job)
    if (phase not in TERMINAL and completed is not None and reported != "Succeeded"
            and _seconds_between(completed, now) >= REPORT_GRACE_SECONDS):
        # The pod exited 0 without reporting: treat as a failure, never as a silent success.
        problems.append(Problem(cond.Reason.TRAINING_FAILED, "the trainer exited without reporting a result", True))
        phase = "Failed"

    if problems:
        worst = next((p for p in problems if p.fatal), problems[0])
        conditions = cond.set_condition(conditions, cond.DEGRADED, True, worst.reason,
                                        "; ".join(p.message for p in problems), generation)
        if cond.get_condition(old.get("conditions"), cond.DEGRADED) is None or \
                cond.get_condition(old.get("conditions"), cond.DEGRADED).get("reason") != worst.reason:
            events.append(("Warning", worst.reason, worst.message))
    elif cond.is_true(conditions, cond.DEGRADED):
        conditions = cond.set_condition(conditions, cond.DEGRADED, False, cond.Reason.RECOVERED, "", generation)

    # No gates configured passes vacuously: the job is eligible on its metrics alone.
    gates = new["gates"] if "gates" in new else old.get("gates")
    if phase == "Succeeded" and gates is not None:
        passed = all(g.get("passed") for g in gates)
        new["gatesPassed"] = passed
        failed = [g for g in gates if not g.get("passed")]
        conditions = cond.set_condition(
            conditions, cond.GATES_PASSED, passed, cond.Reason.GATES_PASSED if passed else cond.Reason.GATES_FAILED,
            "every gate passed" if passed else "failed gates: " + ", ".join(
                f"{g['name']} {g.get('value')} vs {g.get('threshold')}" for g in failed), generation)

    running = phase not in TERMINAL
    conditions = cond.set_condition(
        conditions, cond.PROGRESSING, running, PHASE_REASONS.get(phase, phase) if running else cond.Reason.FINISHED,
        f"phase {phase}" + (f": {(new.get('trials') or {}).get('finished', 0)}/"
                            f"{(new.get('trials') or {}).get('total', 0)} trials" if new.get("trials") else ""),
        generation)
    if phase in TERMINAL:
        new["completionTime"] = now
        model = new.get("model") or {}
        if phase == "Succeeded":
            metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted((new.get("metrics") or {}).items())[:6])
            events.append(("Normal", cond.Reason.SUCCEEDED, f"model {model.get('name')} version {model.get('version')} "
                           f"trained ({metrics}); gates {'passed' if new.get('gatesPassed') else 'not passed'}"))
        else:
            reasons = "; ".join(p.message for p in problems) or "the trainer reported failure"
            events.append(("Warning", cond.Reason.FAILED, reasons))
    new["phase"] = phase
    new["conditions"] = conditions
    return TrainingObservation(new, events)

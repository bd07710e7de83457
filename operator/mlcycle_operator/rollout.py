"""The rollout state machine of a ModelDeployment: spec, last status and a fresh observation in, one decision out.

Pure on purpose: no client, no clock, no I/O. The handler measures, calls decide(), writes the decision into
status and the router's table, and calls again after requeue_after. Everything the machine remembers lives in
status, so the operator can be killed at any point and the next call picks up where the last write left off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from .api.modeldeployment import (
    Analysis,
    AnalysisMetric,
    AnalysisRun,
    BlueGreen,
    Canary,
    CanaryStep,
    HistoryEntry,
    MetricMeasurement,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Rollout,
    Shadow,
    Strategy,
    VersionTraffic,
)
from .resources.serving import STICKY_HEADER
from .units import parse_duration

ANALYSIS_RUNS_LIMIT = 50  # runs kept in status.rollout.analysisRuns, so status never grows without bound
HISTORY_LIMIT = 20  # entries kept in status.history (the field's documented bound)
HISTORY_RUNS_LIMIT = 10  # analysis runs kept in each history entry
MIN_REQUEUE_SECONDS = 1.0  # also the shortest analysis interval: "0s" must not mean "analyse on every call"
READY_POLL_SECONDS = 10.0  # re-check readiness; Deployment events usually wake the handler sooner
SAMPLE_POLL_SECONDS = 30.0  # re-check a shadow comparison that is still short of samples
UNREACHABLE = "metrics could not be measured (metrics source unreachable)"  # an analysis run's message when so


class Action(StrEnum):
    """What a decision does; one value per transition, for Events, logs and the decisions metric."""

    NOTHING = "Nothing"  # no change: steady state, nothing to serve, or a rejected candidate left alone
    WAIT_READY = "WaitReady"  # the version that should get traffic is not Available (yet, or any more)
    DEPLOY_INITIAL = "DeployInitial"  # the first version becomes stable directly, without a rollout
    START = "Start"  # a rollout of a new candidate begins
    HOLD = "Hold"  # a rollout holds: pause, preview or shadow duration not over, no analysis due
    ANALYSE = "Analyse"  # an analysis run was recorded and the rollout holds
    ADVANCE = "Advance"  # the candidate became ready and its first step began, or the next step began
    PROMOTE = "Promote"  # the candidate became stable with all traffic
    ROLL_BACK = "RollBack"  # the candidate was dropped, all traffic back to stable; not retried automatically
    REPORT = "Report"  # a report-only shadow ended: verdict recorded, stable unchanged
    SUPERSEDE = "Supersede"  # the spec asks for a third version: the rollout ends and one for it begins
    ABORT = "Abort"  # the spec asks for the stable version again: the rollout ends
    STALL = "Stall"  # a rollout holds and cannot go on without someone's help (said once; it keeps holding)


# Decisions that change nothing a person would want an Event for (a failed analysis run gets one regardless).
QUIET_ACTIONS = frozenset({Action.NOTHING, Action.WAIT_READY, Action.HOLD, Action.ANALYSE})
WARNING_ACTIONS = frozenset({Action.ROLL_BACK, Action.STALL})


class Reason(StrEnum):
    """CamelCase reasons for Events and conditions; several reasons can share one action."""

    NOTHING_TO_SERVE = "NothingToServe"
    INITIAL_VERSION_NOT_READY = "InitialVersionNotReady"
    INITIAL_VERSION_AVAILABLE = "InitialVersionAvailable"
    STABLE_VERSION_SERVING = "StableVersionServing"
    CANDIDATE_REJECTED = "CandidateRejected"
    ROLLOUT_STARTED = "RolloutStarted"
    CANDIDATE_NOT_READY = "CandidateNotReady"
    REMOVING_STABLE = "RemovingStable"
    CANDIDATE_READY = "CandidateReady"
    STEP_HOLDING = "StepHolding"
    STEP_ADVANCED = "StepAdvanced"
    ANALYSIS_PASSED = "AnalysisPassed"
    ANALYSIS_FAILED = "AnalysisFailed"
    ANALYSIS_INCONCLUSIVE = "AnalysisInconclusive"
    PREVIEW_WITHOUT_TRAFFIC = "PreviewWithoutTraffic"
    SHADOW_COMPARING = "ShadowComparing"
    SHADOW_NOT_ENOUGH_SAMPLES = "ShadowNotEnoughSamples"
    SHADOW_FAILED = "ShadowFailed"
    SHADOW_REPORTED = "ShadowReported"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    CANDIDATE_DISAPPEARED = "CandidateDisappeared"
    SUPERSEDED = "Superseded"
    ABORTED = "Aborted"


@dataclass(frozen=True)
class ShadowStats:
    """The router's comparison of mirrored requests since mirroring of the candidate began."""

    samples: int  # mirrored requests answered by both versions
    agreement: float  # share of those whose answers agreed, 0..1
    latency_ratio: float  # candidate p99 latency / stable p99 latency over the same requests


@dataclass(frozen=True)
class Observation:
    """What the handler measured just now; the state machine never measures anything itself."""

    now: datetime  # timezone-aware; the only clock the machine knows
    # The version the spec resolves to now (pinned, or the newest gated TrainingJob when tracked). None means
    # the spec resolves to nothing: nothing is served if nothing is yet, but a serving model is kept, not dropped.
    desired_version: str | None
    ready_versions: frozenset[str]  # versions whose serving Deployment is Available
    existing_versions: frozenset[str]  # versions whose serving Deployment exists at all
    measurements: Sequence[MetricMeasurement] | None  # the candidate's analysis values; None: could not measure
    shadow: ShadowStats | None = None  # the shadow comparison so far; None: not measured

    def __post_init__(self) -> None:
        # Status timestamps come back from the API server timezone-aware; a naive `now` could not be compared.
        if self.now.tzinfo is None or self.now.utcoffset() is None:
            raise ValueError(f"Observation.now must be timezone-aware (UTC), got {self.now!r}")


@dataclass(frozen=True)
class Decision:
    """What to do now: the versions, the routing table and the status fields to write, and why in words."""

    action: Action
    reason: Reason  # CamelCase, for the Event and the Progressing condition
    message: str  # one sentence for people: versions, step, measured values
    stable_version: str | None
    candidate_version: str | None  # also the version to bring up while a first version is not ready yet
    traffic: tuple[VersionTraffic, ...] = ()  # the routing table: weights sum to 100 when anything is served
    rollout: Rollout | None = None  # the new status.rollout; None when no rollout is under way
    history_entry: HistoryEntry | None = None  # to append to status.history: set when a rollout ends
    analysis_run: AnalysisRun | None = None  # the run this decision recorded (also in rollout.analysis_runs)
    requeue_after: float | None = None  # seconds until decide() has something to do again; None: only on change
    # Versions whose servers should run now; None: the stable and the candidate version. Recreate sets it, so
    # that the old version's servers are gone before the new version's are created.
    servers: tuple[str, ...] | None = None

    def versions_to_run(self) -> list[str]:
        """The versions whose servers (Deployment, Service, ...) should exist after this decision."""
        if self.servers is not None:
            return list(self.servers)
        return [v for v in (self.stable_version, self.candidate_version) if v]

    @property
    def event_type(self) -> str | None:
        """"Warning" or "Normal" for the Event this decision deserves, or None when it deserves none."""
        failed_run = self.analysis_run is not None and self.analysis_run.verdict == "Fail"
        if self.action in WARNING_ACTIONS or failed_run:
            return "Warning"
        return None if self.action in QUIET_ACTIONS else "Normal"


def decide(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, obs: Observation) -> Decision:
    """The next step of a ModelDeployment's rollout; deterministic, and a no-op when repeated at the same `now`."""
    stable = status.stable_version
    # A rollout only means something beside a stable version and with a candidate; anything else is stale.
    rollout = status.rollout if stable is not None and status.rollout and status.rollout.candidate_version else None
    desired = obs.desired_version
    if desired is None:
        if stable is None:
            return Decision(Action.NOTHING, Reason.NOTHING_TO_SERVE,
                            "The spec resolves to no model version yet, so nothing is served.", None, None)
        # A spec that resolves to nothing (its TrainingJobs deleted, say) must not take a serving model offline.
        desired = rollout.candidate_version if rollout is not None else stable
    if stable is None:
        return _initial(desired, obs)
    if rollout is None:
        if desired == stable:
            return Decision(Action.NOTHING, Reason.STABLE_VERSION_SERVING, f"{stable} serves all traffic.",
                            stable, None, _stable_only(stable))
        rejected = _rejection(status.history, desired)
        if rejected is not None:
            return Decision(Action.NOTHING, Reason.CANDIDATE_REJECTED,
                            f"Not rolling out {desired} again: {rejected}; {stable} keeps all traffic.",
                            stable, None, _stable_only(stable))
        return _start(spec, stable, desired, obs)
    if desired == stable:
        return _abort(spec, stable, rollout, obs)
    if desired != rollout.candidate_version:
        return _supersede(spec, status, stable, rollout, desired, obs)
    return _progress(spec, stable, rollout, obs, status.endpoint)


def analyse(metrics: Sequence[AnalysisMetric], measurements: Sequence[MetricMeasurement] | None, *,
            now: datetime, step: int) -> AnalysisRun:
    """One analysis run: each value judged against its metric; Fail on any failure, else Inconclusive on any gap."""
    if measurements is None:
        unmeasured = [MetricMeasurement(name=m.name, threshold=m.threshold) for m in metrics]
        return AnalysisRun(time=now, step=step, verdict="Inconclusive", measurements=unmeasured,
                           message=f"{UNREACHABLE}, so no verdict")
    by_name = {m.name: m for m in measurements}
    judged: list[tuple[MetricMeasurement, str]] = []
    for metric in metrics:
        # A metric of the spec that was not measured at all is a gap, not a pass.
        got = by_name.pop(metric.name, None)
        judged.append(_judge(metric.name, got.value if got else None, metric.threshold, metric.comparison))
    for extra in by_name.values():
        # Measured without being in the spec: the handler's defaults (error rate, p99 latency). Trust its verdict
        # when it gave one; otherwise lower is better, as it is for every default.
        comparison = "lessThan"
        if extra.value is not None and extra.passed is not None and extra.passed != (extra.value < extra.threshold):
            comparison = "greaterThan"
        judged.append(_judge(extra.name, extra.value, extra.threshold, comparison))
    failed = [_describe(m, c) for m, c in judged if m.passed is False]
    missing = [m.name for m, _ in judged if m.passed is None]
    if failed:
        verdict, message = "Fail", "; ".join(failed)
    elif not judged:
        verdict, message = "Inconclusive", "nothing was measured, so no verdict"
    elif missing:
        verdict, message = "Inconclusive", f"not measured: {', '.join(missing)}, so no verdict"
    else:
        verdict, message = "Pass", "within thresholds: " + ", ".join(_describe(m, c) for m, c in judged)
    return AnalysisRun(time=now, step=step, verdict=verdict, measurements=[m for m, _ in judged], message=message)


def analysis_due(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, now: datetime) -> bool:
    """Whether decide() at `now` may record an analysis run, so the handler need query Prometheus only then."""
    rollout = status.rollout
    if spec.strategy.type not in ("Canary", "BlueGreen") or rollout is None or rollout.step_started_at is None:
        return False
    return now >= _next_analysis(rollout, _steps_of(spec.strategy)[1])


def due_in(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, now: datetime) -> float | None:
    """Seconds from `now` until the clock alone gives decide() something to do in the current step (an analysis
    run falls due, a pause or a shadow duration ends): 0 when that moment has come, None when nothing is timed
    (no step under way, Recreate, a shadow past its duration: it waits for samples, not for the clock)."""
    rollout = status.rollout
    if rollout is None or rollout.step_started_at is None or status.stable_version is None:
        return None
    strategy = spec.strategy
    if strategy.type == "Recreate":
        return None
    if strategy.type == "Shadow":
        ends = rollout.step_started_at + timedelta(seconds=parse_duration((strategy.shadow or Shadow()).duration))
        return (ends - now).total_seconds() if ends > now else None
    steps, analysis = _steps_of(strategy)
    pause_ends = rollout.step_started_at + timedelta(
        seconds=parse_duration(steps[min(rollout.step, len(steps) - 1)].pause))
    moments = [_next_analysis(rollout, analysis)] + ([pause_ends] if pause_ends > now else [])
    return max(0.0, min((m - now).total_seconds() for m in moments))


def apply_decision(status: ModelDeploymentStatus, decision: Decision) -> ModelDeploymentStatus:
    """The status after a decision (versions, traffic, rollout, history); phase and conditions stay the handler's."""
    history = list(status.history)
    if decision.history_entry is not None:
        # The rollout (and its runs) leaves status with this decision; the entry keeps what decided it.
        runs = list(status.rollout.analysis_runs) if status.rollout else []
        if decision.analysis_run is not None and decision.analysis_run not in runs:
            runs.append(decision.analysis_run)
        entry = decision.history_entry.model_copy(update={"analysis_runs": runs[-HISTORY_RUNS_LIMIT:]})
        history = [*history, entry][-HISTORY_LIMIT:]
    return status.model_copy(update={
        "stable_version": decision.stable_version,
        "candidate_version": decision.candidate_version,
        "traffic": list(decision.traffic),
        "traffic_summary": traffic_summary(decision.traffic),
        "rollout": decision.rollout,
        "history": history,
    })


def traffic_summary(traffic: Sequence[VersionTraffic]) -> str | None:
    """The routing table in one line for `kubectl get`, e.g. "v3=90 v4=10" or "v3=100 v4=0+10%shadow"."""
    parts = [f"{t.version}={t.weight}" + (f"+{t.shadow_percent}%shadow" if t.shadow_percent else "")
             for t in traffic]
    return " ".join(parts) or None


# --- transitions -----------------------------------------------------------------------------------------------


def _initial(desired: str, obs: Observation) -> Decision:
    """The first version goes straight to stable once ready: there is nothing to compare it with."""
    if desired not in obs.ready_versions:
        return Decision(Action.WAIT_READY, Reason.INITIAL_VERSION_NOT_READY,
                        f"Waiting for {desired}, the first version, to become ready; nothing is served until then.",
                        None, desired, requeue_after=READY_POLL_SECONDS)
    entry = HistoryEntry(time=obs.now, version=desired, outcome="Promoted",
                         reason="first version, served directly without a rollout")
    return Decision(Action.DEPLOY_INITIAL, Reason.INITIAL_VERSION_AVAILABLE,
                    f"{desired} is ready and serves all traffic (first version, no rollout).",
                    desired, None, _stable_only(desired), history_entry=entry)


def _start(spec: ModelDeploymentSpec, stable: str, candidate: str, obs: Observation) -> Decision:
    """A new rollout, already as far as it can get at this instant (its first step begins if the candidate is ready)."""
    decision = _progress(spec, stable, Rollout(candidate_version=candidate, started_at=obs.now), obs)
    if decision.action in (Action.WAIT_READY, Action.ADVANCE, Action.HOLD):
        return replace(decision, action=Action.START, reason=Reason.ROLLOUT_STARTED,
                       message=f"Started a {spec.strategy.type} rollout of {candidate} to replace {stable}; "
                               + _lower_first(decision.message))
    return decision  # Recreate with a ready candidate promotes at once


def _abort(spec: ModelDeploymentSpec, stable: str, rollout: Rollout, obs: Observation) -> Decision:
    """The user pinned the stable version again: the candidate leaves without being judged (not a rejection)."""
    candidate = rollout.candidate_version
    entry = HistoryEntry(time=obs.now, version=candidate, outcome="Superseded",
                         reason=f"aborted: the spec asks for the stable version {stable} again")
    # Recreate never runs two versions: the candidate's servers go first, the stable version's come back after.
    servers = () if spec.strategy.type == "Recreate" and candidate in obs.existing_versions else None
    return Decision(Action.ABORT, Reason.ABORTED,
                    f"Aborted the rollout of {candidate}: the spec asks for {stable} again, which gets all traffic.",
                    stable, None, _stable_only(stable), history_entry=entry, servers=servers)


def _supersede(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, stable: str, rollout: Rollout,
               desired: str, obs: Observation) -> Decision:
    """The spec moved on to a third version: the current rollout ends and one for the new version begins."""
    old = rollout.candidate_version
    entry = HistoryEntry(time=obs.now, version=old, outcome="Superseded", reason=f"the spec now asks for {desired}")
    rejected = _rejection(status.history, desired)
    if rejected is not None:
        return Decision(Action.SUPERSEDE, Reason.SUPERSEDED,
                        f"Stopped the rollout of {old}: the spec now asks for {desired}, which is not rolled out "
                        f"again ({rejected}); {stable} gets all traffic.",
                        stable, None, _stable_only(stable), history_entry=entry)
    started = _start(spec, stable, desired, obs)
    if started.history_entry is not None:
        # One decision ends one rollout: the new one (a Recreate that could promote at once) ends on the next call.
        recreate = spec.strategy.type == "Recreate"  # whose stable servers are gone already: keep it that way
        started = Decision(Action.START, Reason.ROLLOUT_STARTED, f"Started a rollout of {desired}.", stable, desired,
                           _split(stable, desired, 100 if recreate else 0),
                           rollout=Rollout(candidate_version=desired, started_at=obs.now),
                           requeue_after=MIN_REQUEUE_SECONDS, servers=(desired,) if recreate else None)
    return replace(started, action=Action.SUPERSEDE, reason=Reason.SUPERSEDED, history_entry=entry,
                   message=f"Stopped the rollout of {old} because the spec now asks for {desired}; "
                           + _lower_first(started.message))


def _progress(spec: ModelDeploymentSpec, stable: str, rollout: Rollout, obs: Observation,
              endpoint: str | None = None) -> Decision:
    """A rollout under way: readiness first, then the strategy's own rules."""
    candidate = rollout.candidate_version
    if spec.strategy.type == "Recreate":
        return _recreate(stable, rollout, obs)
    # step_started_at is set when the candidate first became ready, so it also records "has been ready".
    has_been_ready = rollout.step_started_at is not None
    if has_been_ready and candidate not in obs.existing_versions:
        return _roll_back(stable, candidate, obs.now, Reason.CANDIDATE_DISAPPEARED,
                          f"the Deployment of {candidate} disappeared during the rollout")
    if candidate not in obs.ready_versions:
        # Route around a candidate that cannot answer; its step and failures are kept for when it is back.
        message = (f"Candidate {candidate} is no longer ready; {stable} gets all traffic until it is again."
                   if has_been_ready else f"Waiting for {candidate} to become ready; {stable} keeps all traffic.")
        return Decision(Action.WAIT_READY, Reason.CANDIDATE_NOT_READY, message, stable, candidate,
                        _split(stable, candidate, 0), rollout=rollout, requeue_after=READY_POLL_SECONDS)
    if not has_been_ready:
        rollout = rollout.model_copy(update={"step": 0, "step_started_at": obs.now})
    strategy = spec.strategy
    if strategy.type == "Shadow":
        decision = _shadow(strategy.shadow or Shadow(), stable, rollout, obs)
    else:
        steps, analysis = _steps_of(strategy)
        decision = _steps(strategy.type, steps, analysis, stable, rollout, obs, endpoint)
    if not has_been_ready and decision.action is Action.HOLD:
        decision = replace(decision, action=Action.ADVANCE, reason=Reason.CANDIDATE_READY,
                           message=f"Candidate {candidate} is ready; " + _lower_first(decision.message))
    return decision


def _recreate(stable: str, rollout: Rollout, obs: Observation) -> Decision:
    """Recreate never runs both versions: the stable version's servers are removed, then the candidate's are
    created, and it is promoted once ready. Nothing answers requests in between; that is what Recreate means."""
    candidate = rollout.candidate_version
    # All weight on the candidate from the start: the router reaches it the moment it answers.
    traffic = _split(stable, candidate, 100)
    if stable in obs.existing_versions:
        # A candidate already running (a rollout that switched to Recreate midway) is kept, not restarted.
        keep = (candidate,) if candidate in obs.existing_versions else ()
        return Decision(Action.WAIT_READY, Reason.REMOVING_STABLE,
                        f"Removing the servers of {stable} before those of {candidate} are created (Recreate); "
                        f"nothing answers requests until {candidate} is ready.",
                        stable, candidate, traffic, rollout=rollout, servers=keep, requeue_after=READY_POLL_SECONDS)
    if candidate not in obs.ready_versions:
        return Decision(Action.WAIT_READY, Reason.CANDIDATE_NOT_READY,
                        f"The servers of {stable} are gone (Recreate); waiting for {candidate} to become ready, "
                        f"nothing answers requests until then.",
                        stable, candidate, traffic, rollout=rollout, servers=(candidate,),
                        requeue_after=READY_POLL_SECONDS)
    return _promote(stable, candidate, obs.now,
                    f"Recreate removed the servers of {stable} before creating those of {candidate}, which is ready")


def _steps_of(strategy: Strategy) -> tuple[list[CanaryStep], Analysis]:
    """A canary's steps; blue-green is one step at 0% that lasts the preview."""
    if strategy.type == "BlueGreen":
        blue_green = strategy.blue_green or BlueGreen()
        return [CanaryStep(weight=0, pause=blue_green.preview_duration)], blue_green.analysis
    canary = strategy.canary or Canary()
    return canary.steps, canary.analysis


def _steps(kind: str, steps: list[CanaryStep], analysis: Analysis, stable: str, rollout: Rollout,
           obs: Observation, endpoint: str | None = None) -> Decision:
    """Hold each step for its pause with analysis every interval; advance on a pass, promote after the last step."""
    now, candidate = obs.now, rollout.candidate_version
    index = min(rollout.step, len(steps) - 1)  # the spec may have lost steps mid-rollout
    step = steps[index]
    started = rollout.step_started_at
    assert started is not None  # _progress began the step
    interval = _interval(analysis)
    pause_ends = started + timedelta(seconds=parse_duration(step.pause))
    next_analysis = _next_analysis(rollout, analysis)
    where = _where(kind, index, steps, candidate)

    run = None
    if now >= next_analysis:
        run = analyse(analysis.metrics, obs.measurements, now=now, step=index)
        failures = rollout.failures + (run.verdict == "Fail")
        rollout = rollout.model_copy(update={
            "analysis_runs": [*rollout.analysis_runs, run][-ANALYSIS_RUNS_LIMIT:],
            "failures": failures,
        })
        next_analysis = now + interval
        if run.verdict == "Fail" and failures >= analysis.failure_limit:
            return _roll_back(stable, candidate, now, Reason.ROLLED_BACK,
                              f"analysis failed {failures} {'time' if failures == 1 else 'times'} "
                              f"(failure limit {analysis.failure_limit}), last during {where}: {run.message}",
                              analysis_run=run)

    if now >= pause_ends and _step_passed(rollout, index):
        if index + 1 == len(steps):
            return _promote(stable, candidate, now, f"{where} passed its analysis", analysis_run=run)
        following = steps[index + 1]
        rollout = rollout.model_copy(update={"step": index + 1, "step_started_at": now})
        return Decision(Action.ADVANCE, Reason.STEP_ADVANCED,
                        f"Advanced to {_where(kind, index + 1, steps, candidate)} after {where} passed its analysis.",
                        stable, candidate, _split(stable, candidate, following.weight), rollout=rollout,
                        analysis_run=run,
                        requeue_after=_until(now, now + interval, now + timedelta(seconds=parse_duration(
                            following.pause))))

    traffic = _split(stable, candidate, step.weight)
    requeue = _until(now, next_analysis, pause_ends if now < pause_ends else None)
    if kind == "BlueGreen" and _preview_unmeasured(rollout, index, pause_ends):
        # Say once (Stall: a Warning Event) why the preview holds past its duration, and keep holding:
        # a version nobody measured is never promoted.
        first = run is not None and sum(r.time >= pause_ends for r in _step_runs(rollout, index)) == 1
        action = Action.STALL if first else (Action.ANALYSE if run is not None else Action.HOLD)
        target = endpoint or "the deployment's endpoint (status.endpoint)"
        return Decision(action, Reason.PREVIEW_WITHOUT_TRAFFIC,
                        f"The blue-green preview of {candidate} received no traffic, so no analysis run could measure "
                        f"it and it is not promoted; send it test requests at {target} with the header "
                        f"{STICKY_HEADER}: {candidate} (the router measures only what passes through it). "
                        f"{stable} keeps all traffic; next analysis in "
                        f"{_seconds_text((next_analysis - now).total_seconds())}.",
                        stable, candidate, traffic, rollout=rollout, analysis_run=run, requeue_after=requeue)
    if run is not None:
        reason = {"Pass": Reason.ANALYSIS_PASSED, "Fail": Reason.ANALYSIS_FAILED,
                  "Inconclusive": Reason.ANALYSIS_INCONCLUSIVE}[run.verdict]
        failures_note = (f" (failure {rollout.failures} of {analysis.failure_limit} before rollback)"
                         if run.verdict == "Fail" else "")
        return Decision(Action.ANALYSE, reason,
                        f"Analysis of {candidate} during {where}: {run.verdict}{failures_note}, {run.message}.",
                        stable, candidate, traffic, rollout=rollout, analysis_run=run, requeue_after=requeue)
    if now < pause_ends:
        waiting = f"{_seconds_text((pause_ends - now).total_seconds())} left"
    else:
        waiting = f"waiting for a passing analysis, next in {_seconds_text((next_analysis - now).total_seconds())}"
    return Decision(Action.HOLD, Reason.STEP_HOLDING, f"Holding {where}: {waiting}.", stable, candidate, traffic,
                    rollout=rollout, requeue_after=requeue)


def _interval(analysis: Analysis) -> timedelta:
    return timedelta(seconds=max(parse_duration(analysis.interval), MIN_REQUEUE_SECONDS))


def _next_analysis(rollout: Rollout, analysis: Analysis) -> datetime:
    """When the next analysis run is due in the current step."""
    assert rollout.step_started_at is not None
    # An interval after the later of the step's start and the last run: a run at `now` makes the next one due in
    # the future, which is what keeps a repeated call at the same `now` from counting twice.
    last_run = rollout.analysis_runs[-1].time if rollout.analysis_runs else rollout.step_started_at
    return max(rollout.step_started_at, last_run) + _interval(analysis)


def _step_runs(rollout: Rollout, index: int) -> list[AnalysisRun]:
    """The analysis runs of the current step, oldest first."""
    assert rollout.step_started_at is not None
    return [r for r in rollout.analysis_runs if r.step == index and r.time >= rollout.step_started_at]


def _preview_unmeasured(rollout: Rollout, index: int, preview_ends: datetime) -> bool:
    """Whether a preview is over with no conclusive run, a run since it ended found no values at all, and
    Prometheus answered (an unreachable one is a different problem, with its own message)."""
    runs = _step_runs(rollout, index)
    if not runs or runs[-1].time < preview_ends or any(r.verdict != "Inconclusive" for r in runs):
        return False
    last = runs[-1]
    return (bool(last.measurements) and all(m.value is None for m in last.measurements)
            and not last.message.startswith(UNREACHABLE))


def _step_passed(rollout: Rollout, index: int) -> bool:
    """Whether the step's latest decisive run (Inconclusive does not count) is a Pass."""
    assert rollout.step_started_at is not None
    for run in reversed(rollout.analysis_runs):
        if run.time < rollout.step_started_at:
            break
        # A run at the instant a step began belongs to the step before it; the step index tells them apart.
        if run.step == index and run.verdict != "Inconclusive":
            return run.verdict == "Pass"
    return False


def _shadow(shadow: Shadow, stable: str, rollout: Rollout, obs: Observation) -> Decision:
    """Mirror for the duration, then judge agreement and latency once enough samples are in."""
    now, candidate = obs.now, rollout.candidate_version
    assert rollout.step_started_at is not None
    traffic = _split(stable, candidate, 0, shadow_percent=shadow.percent)
    ends = rollout.step_started_at + timedelta(seconds=parse_duration(shadow.duration))
    stats = obs.shadow
    if now < ends:
        seen = f"{stats.samples} samples so far" if stats is not None else "no samples yet"
        return Decision(Action.HOLD, Reason.SHADOW_COMPARING,
                        f"Mirroring {shadow.percent}% of requests to {candidate} for "
                        f"{_seconds_text((ends - now).total_seconds())} more ({seen}); {stable} answers them all.",
                        stable, candidate, traffic, rollout=rollout, requeue_after=_until(now, ends))
    if (stats is None or stats.samples < shadow.min_samples
            or not math.isfinite(stats.agreement) or not math.isfinite(stats.latency_ratio)):
        got = stats.samples if stats is not None else 0
        return Decision(Action.HOLD, Reason.SHADOW_NOT_ENOUGH_SAMPLES,
                        f"Mirroring to {candidate} goes on: {got} of {shadow.min_samples} comparable samples "
                        f"needed before judging it against {stable}.",
                        stable, candidate, traffic, rollout=rollout, requeue_after=SAMPLE_POLL_SECONDS)
    run = _shadow_run(shadow, stats, now)
    if run.verdict == "Fail":
        return _roll_back(stable, candidate, now, Reason.SHADOW_FAILED, f"shadow comparison failed: {run.message}",
                          analysis_run=run)
    if shadow.on_success == "Promote":
        return _promote(stable, candidate, now, f"shadow comparison passed: {run.message}", analysis_run=run)
    # Report only: the comparison is the product. The outcome is recorded as RolledBack (the schema has no
    # "Reported"), which also keeps the same version from being shadowed again and again.
    entry = HistoryEntry(time=now, version=candidate, outcome="RolledBack",
                         reason=f"report only (onSuccess: Report), shadow comparison passed: {run.message}")
    return Decision(Action.REPORT, Reason.SHADOW_REPORTED,
                    f"Shadow of {candidate} passed ({run.message}); onSuccess is Report, so mirroring stops and "
                    f"{stable} keeps all traffic.",
                    stable, None, _stable_only(stable), history_entry=entry, analysis_run=run)


def _shadow_run(shadow: Shadow, stats: ShadowStats, now: datetime) -> AnalysisRun:
    """The shadow verdict as an analysis run, so it shows in status and Events like a canary's."""
    agreement = MetricMeasurement(name="agreement", value=stats.agreement, threshold=shadow.min_agreement,
                                  passed=stats.agreement >= shadow.min_agreement)
    latency = MetricMeasurement(name="latencyRatio", value=stats.latency_ratio, threshold=shadow.max_latency_ratio,
                                passed=stats.latency_ratio <= shadow.max_latency_ratio)
    message = (f"agreement {stats.agreement:.3g} {'>=' if agreement.passed else '<'} {shadow.min_agreement:g}, "
               f"p99 latency ratio {stats.latency_ratio:.3g} {'<=' if latency.passed else '>'} "
               f"{shadow.max_latency_ratio:g} over {stats.samples} samples")
    verdict = "Pass" if agreement.passed and latency.passed else "Fail"
    return AnalysisRun(time=now, step=0, verdict=verdict, measurements=[agreement, latency], message=message)


def _promote(stable: str, candidate: str, now: datetime, why: str, analysis_run: AnalysisRun | None = None
             ) -> Decision:
    """The candidate takes all traffic and becomes stable; the rollout ends."""
    entry = HistoryEntry(time=now, version=candidate, outcome="Promoted", reason=why)
    return Decision(Action.PROMOTE, Reason.PROMOTED,
                    f"Promoted {candidate} in place of {stable}, with all traffic: {why}.",
                    candidate, None, _stable_only(candidate), history_entry=entry, analysis_run=analysis_run)


def _roll_back(stable: str, candidate: str, now: datetime, reason: Reason, why: str,
               analysis_run: AnalysisRun | None = None) -> Decision:
    """All traffic back to stable; the history entry keeps the candidate from being retried automatically."""
    entry = HistoryEntry(time=now, version=candidate, outcome="RolledBack", reason=why)
    return Decision(Action.ROLL_BACK, reason, f"Rolled back {candidate}, {stable} gets all traffic again: {why}.",
                    stable, None, _stable_only(stable), history_entry=entry, analysis_run=analysis_run)


# --- small helpers ---------------------------------------------------------------------------------------------


def _rejection(history: Sequence[HistoryEntry], version: str) -> str | None:
    """Why a version is not rolled out again (its latest rollout was rolled back), or None when it may be."""
    for entry in reversed(history):
        if entry.version == version:
            if entry.outcome != "RolledBack":
                return None
            return f"it was rolled back at {entry.time.isoformat()} ({entry.reason})"
    return None


def _judge(name: str, value: float | None, threshold: float, comparison: str) -> tuple[MetricMeasurement, str]:
    """One measured value against its threshold; NaN (e.g. an error rate with no requests) counts as unmeasured."""
    if value is not None and math.isnan(value):
        value = None
    passed = None if value is None else (value < threshold if comparison == "lessThan" else value > threshold)
    return MetricMeasurement(name=name, value=value, threshold=threshold, passed=passed), comparison


def _describe(measurement: MetricMeasurement, comparison: str) -> str:
    """A judged value in words, e.g. "errorRate 0.12 is not below 0.05"."""
    if measurement.value is None:
        return f"{measurement.name} not measured"
    relations = {("lessThan", True): "<", ("lessThan", False): "is not below",
                 ("greaterThan", True): ">", ("greaterThan", False): "is not above"}
    relation = relations[comparison, bool(measurement.passed)]
    return f"{measurement.name} {measurement.value:.4g} {relation} {measurement.threshold:g}"


def _where(kind: str, index: int, steps: Sequence[CanaryStep], candidate: str) -> str:
    """The step in words, e.g. "step 2 of 3 (50% to v4)" or "the blue-green preview of v4"."""
    if kind == "BlueGreen":
        return f"the blue-green preview of {candidate}"
    return f"step {index + 1} of {len(steps)} ({steps[index].weight}% to {candidate})"


def _stable_only(stable: str) -> tuple[VersionTraffic, ...]:
    return (VersionTraffic(version=stable, weight=100, role="stable"),)


def _split(stable: str, candidate: str, weight: int, shadow_percent: int = 0) -> tuple[VersionTraffic, ...]:
    return (VersionTraffic(version=stable, weight=100 - weight, role="stable"),
            VersionTraffic(version=candidate, weight=weight, role="candidate", shadow_percent=shadow_percent))


def _until(now: datetime, *moments: datetime | None) -> float:
    """Seconds until the earliest of the moments, never below MIN_REQUEUE_SECONDS."""
    seconds = min((m - now).total_seconds() for m in moments if m is not None)
    return max(MIN_REQUEUE_SECONDS, seconds)


def _seconds_text(seconds: float) -> str:
    """A duration for people, in the manifest's own notation: 90 -> "1m30s"."""
    whole = max(0, math.ceil(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return text or "0s"


def _lower_first(text: str) -> str:
    # Only for messages that start with an English word (never a version name), to join them into one sentence.
    return text[:1].lower() + text[1:]

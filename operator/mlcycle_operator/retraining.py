"""Whether a drift report starts a retraining: the monitor's action and the project's policy, applied so that a
flapping monitor cannot start a training storm. Pure: no clock, no client."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import conditions as cond
from .api.driftmonitor import DriftMonitorSpec
from .api.mlproject import RetrainingPolicy
from .resources.common import child_name
from .units import parse_duration

START = "Start"
SKIP = "Skip"


@dataclass(frozen=True)
class RetrainDecision:
    """Start a TrainingJob named `job_name`, or skip, with the reason in one word and a sentence."""

    action: str
    reason: cond.Reason
    message: str
    job_name: str | None = None


def _parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def retrain_day_count(status: dict[str, Any], now: datetime) -> int:
    """Retrainings already started today (UTC); the counter resets when the day changes."""
    return int(status.get("retrainsToday") or 0) if status.get("retrainDay") == now.date().isoformat() else 0


def decide(spec: DriftMonitorSpec, status: dict[str, Any], report: dict[str, Any], policy: RetrainingPolicy,
           active_retrains: int, now: datetime, monitor: str) -> RetrainDecision:
    """Apply, in order: drift found, enough samples, retraining enabled, enough drifted features, cooldown,
    daily cap, concurrency."""
    drifted = list(report.get("driftedFeatures") or [])
    if not report.get("drifted"):
        return RetrainDecision(SKIP, cond.Reason.NO_DRIFT, "no drift in the last report")
    if int(report.get("samples") or 0) < spec.min_samples:
        return RetrainDecision(SKIP, cond.Reason.NOT_ENOUGH_SAMPLES,
                               f"{report.get('samples')} samples in the window, {spec.min_samples} needed")
    retrain = spec.actions.retrain
    if retrain is None or not retrain.enabled:
        return RetrainDecision(SKIP, cond.Reason.REPORT_ONLY, "drift found; retraining is not enabled for this monitor")
    if len(drifted) < retrain.min_drifted_features:
        return RetrainDecision(SKIP, cond.Reason.TOO_FEW_FEATURES,
                               f"{len(drifted)} drifted feature(s), {retrain.min_drifted_features} needed")
    cooldown = max(parse_duration(retrain.cooldown), parse_duration(policy.cooldown))
    last = _parse_time((status.get("lastRetrain") or {}).get("time"))
    if last is not None and (now - last).total_seconds() < cooldown:
        left = cooldown - (now - last).total_seconds()
        return RetrainDecision(SKIP, cond.Reason.COOLING_DOWN,
                               f"last retraining started at {last.isoformat()}; cooldown ends in {left / 60:.0f} min")
    cap = min(retrain.max_per_day, policy.daily_budget)
    today = retrain_day_count(status, now)
    if today >= cap:
        return RetrainDecision(SKIP, cond.Reason.DAILY_CAP_REACHED,
                               f"{today} retraining(s) started today, the cap is {cap}")
    if active_retrains >= policy.max_concurrent:
        return RetrainDecision(SKIP, cond.Reason.TOO_MANY_RUNNING,
                               f"{active_retrains} retraining(s) still running, the project allows "
                               f"{policy.max_concurrent}")
    scores = {f["name"]: f["score"] for f in report.get("features") or [] if f.get("drifted")}
    detail = ", ".join(f"{name}={scores[name]:.3g}" if name in scores else name for name in drifted[:10])
    # Named after the report's time, so a retry after a crash finds the job it already created.
    stamp = _parse_time(report["time"]).strftime("%Y%m%d-%H%M%S")
    return RetrainDecision(START, cond.Reason.DRIFT_DETECTED, f"drift on {detail}",
                           job_name=child_name(monitor, "retrain", stamp))

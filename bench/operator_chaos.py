"""The operator killed at random moments of rollouts: on a fresh local control plane with a real Prometheus and
synthetic router metrics, roll out N versions of one ModelDeployment in turn (some healthy, some with a high
error rate, chosen by the seed), SIGKILL the operator k times at seeded-random moments of each rollout and start
a new one each time. Reports per rollout: the expected and actual outcome, the kills (where each landed), the
time to converge after the last restart, double promotions or rollbacks (history entries and Events), orphans
(servers of versions that left, after scaleDownDelay), and for a bad canary the time until rollback with the
operator up, against interval x failureLimit. Then totals. Prints figures; asserts nothing.

    .venv/bin/python bench/operator_chaos.py --rollouts 10 --kills 2 --seed 1
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness import binaries  # noqa: E402
from tests.harness.cluster import LocalCluster  # noqa: E402
from tests.harness.operator_process import start_operator, stop_operator  # noqa: E402
from tests.harness.prometheus import Prometheus  # noqa: E402
from tests.harness.router_metrics import RouterMetrics  # noqa: E402
from tests.integration.helpers import EXAMPLES, Mlcycle  # noqa: E402

# The same deployment and the same definition of an orphan as the restart test.
from tests.integration.test_operator_restart import (  # noqa: E402
    FAILURE_LIMIT,
    INTERVAL_S,
    NAME,
    SCALE_DOWN_DELAY_S,
    install_crds,
    orphans,
    outcomes,
    restart_deployment,
    stamp,
)

NAMESPACE = "chaos"
# Kill moments are drawn over this many seconds after the spec changes: about a healthy canary's length here (10 s
# and 6 s steps, analysis every 4 s on a 5 s timer) plus the scale-down, so kills land in every phase and the drain.
KILL_WINDOW_S = 25.0


class Chaos:
    """One operator process at a time; kills it and starts the next, keeping the downtime of each."""

    def __init__(self, cluster: LocalCluster, prometheus_url: str):
        self.cluster = cluster
        self.env = {"MLCYCLE_PROMETHEUS_URL": prometheus_url, "MLCYCLE_LOG_LEVEL": "WARNING"}
        self.process = start_operator(cluster, **self.env)

    def kill_and_restart(self) -> tuple[float, float]:
        """SIGKILL, start again; (when the kill happened, seconds until the new operator answered /healthz)."""
        killed = time.monotonic()
        stop_operator(self.cluster, self.process)
        self.process = start_operator(self.cluster, **self.env)
        return killed, time.monotonic() - killed


def where(status: dict[str, Any]) -> str:
    """Where a rollout is, in a few words, for the report of each kill."""
    rollout = status.get("rollout") or {}
    if rollout:
        runs = len(rollout.get("analysisRuns") or [])
        return f"step {rollout.get('step', '-')} ({status.get('trafficSummary')}), {runs} runs"
    return f"no rollout ({status.get('trafficSummary')}, retiring {status.get('retiring') or '-'})"


def count_events(ml: Mlcycle, reason: str, prefix: str) -> int:
    return sum(e.startswith(f"{reason}: {prefix}") for e in ml.events(NAME))


def one_rollout(ml: Mlcycle, chaos: Chaos, metrics: RouterMetrics, rng: random.Random, version: str, bad: bool,
                stable: str, kills: int, timeout: float) -> dict[str, Any]:
    expected = "RolledBack" if bad else "Promoted"
    metrics.set(ml.namespace, NAME, version, error_rate=0.5 if bad else 0.0, latency_seconds=0.02)
    moments = sorted(rng.uniform(0, KILL_WINDOW_S) for _ in range(kills))
    status = lambda: ml.status("ModelDeployment", NAME)  # noqa: E731
    start = time.monotonic()
    ml.objects.patch_namespaced_custom_object("mlcycle.io", "v1alpha1", ml.namespace, "modeldeployments", NAME,
                                              {"spec": {"model": {"version": version}}})
    first_traffic = decided = None
    downtime: list[tuple[float, float]] = []  # (killed at, epoch seconds; down for)
    landed = []

    def observe() -> dict[str, Any]:
        """Read status; keep the operator's own timestamps of the candidate's first traffic and of the verdict."""
        nonlocal first_traffic, decided
        current = status()
        rollout = current.get("rollout") or {}
        if (first_traffic is None and rollout.get("candidateVersion") == version and rollout.get("stepStartedAt")
                and rollout.get("step", 0) == 0):
            first_traffic = stamp(rollout["stepStartedAt"])
        entries = [h for h in current.get("history") or [] if h["version"] == version]
        if decided is None and entries:
            decided = stamp(entries[0]["time"])
        return current

    restarted = start
    for moment in moments:
        while time.monotonic() < start + moment:
            observe()
            time.sleep(0.1)
        at = where(observe())
        killed_at = time.time()
        killed, down = chaos.kill_and_restart()
        downtime.append((killed_at, down))
        restarted = killed + down
        landed.append(f"{killed - start:.1f}s: {at}")
    deadline = time.monotonic() + timeout
    converged = None
    while time.monotonic() < deadline:
        current = observe()
        final = outcomes(current, version)
        if final and not current.get("rollout") and current.get("trafficSummary") is not None:
            keep = {current.get("stableVersion")}
            if not orphans(ml, keep):
                converged = time.monotonic()
                break
        time.sleep(0.2)
    current = status()
    history = outcomes(current, version)
    outcome = history[-1] if history else "none"
    left = orphans(ml, {current.get("stableVersion")})
    result = {
        "version": version, "expected": expected, "outcome": outcome,
        "stable": current.get("stableVersion"), "traffic": current.get("trafficSummary"), "kills": landed,
        "converge_after_last_restart_s": round(converged - restarted, 1) if converged else None,
        "total_s": round((converged or time.monotonic()) - start, 1),
        "history_entries": len(history),
        "promoted_events": count_events(ml, "Promoted", f"Promoted {version} "),
        "rolled_back_events": count_events(ml, "RolledBack", f"Rolled back {version},"),
        "orphans": left,
    }
    result["double_promotion"] = history.count("Promoted") > 1 or result["promoted_events"] > 1
    result["double_rollback"] = history.count("RolledBack") > 1 or result["rolled_back_events"] > 1
    if bad and first_traffic and decided:
        # Downtime inside the window does not count against the operator: it cannot roll back while dead.
        dead = sum(min(k + d, decided) - max(k, first_traffic) for k, d in downtime
                   if k < decided and k + d > first_traffic)
        result["rollback_s"] = round(decided - first_traffic, 1)
        result["rollback_up_s"] = round(decided - first_traffic - dead, 1)
    result["ok"] = (outcome == expected and current.get("stableVersion") == (stable if bad else version) and not left
                    and not result["double_promotion"] and not result["double_rollback"])
    return result


def setup(cluster: LocalCluster) -> Mlcycle:
    api = config.new_client_from_config(str(cluster.kubeconfig_path))
    install_crds(cluster)
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    core.create_persistent_volume(client.V1PersistentVolume(
        metadata=client.V1ObjectMeta(name="chaos-models"),
        spec=client.V1PersistentVolumeSpec(
            capacity={"storage": "10Gi"}, access_modes=["ReadWriteMany"],
            host_path=client.V1HostPathVolumeSource(path="/tmp/mlcycle-chaos-models"),
            persistent_volume_reclaim_policy="Retain",
            claim_ref=client.V1ObjectReference(namespace=NAMESPACE, name="churn-models"))))
    return Mlcycle(api, NAMESPACE)


def summary(results: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    converge = [r["converge_after_last_restart_s"] for r in results if r["converge_after_last_restart_s"] is not None]
    rollback_up = [r["rollback_up_s"] for r in results if "rollback_up_s" in r]
    return {
        "rollouts": len(results), "kills": sum(len(r["kills"]) for r in results),
        "right_outcome": sum(r["outcome"] == r["expected"] for r in results),
        "not_converged": sum(r["converge_after_last_restart_s"] is None for r in results),
        "double_promotions": sum(r["double_promotion"] for r in results),
        "double_rollbacks": sum(r["double_rollback"] for r in results),
        "rollouts_with_orphans": sum(bool(r["orphans"]) for r in results),
        "converge_after_last_restart_s": {"p50": round(statistics.median(converge), 1) if converge else None,
                                          "max": max(converge, default=None)},
        "bad_canary_rollback_up_s": {"p50": round(statistics.median(rollback_up), 1) if rollback_up else None,
                                     "max": max(rollback_up, default=None),
                                     "target": args.interval * args.failure_limit},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=10)
    parser.add_argument("--kills", type=int, default=2, help="SIGKILLs of the operator per rollout")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bad", type=float, default=0.3, help="share of rollouts whose canary fails its analysis")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to converge after the last kill")
    args = parser.parse_args()
    args.interval, args.failure_limit = INTERVAL_S, FAILURE_LIMIT
    if shutil.which("prometheus") is None:
        print("prometheus is not installed (make system-deps)", file=sys.stderr)
        return 2

    rng = random.Random(args.seed)
    cluster = LocalCluster(directory=Path(tempfile.mkdtemp(prefix="mlcycle-chaos-")),
                           binaries=binaries.ensure_all(), nodes=1, gpu_nodes=0)
    metrics = RouterMetrics()
    prometheus = Prometheus(cluster.directory / "prometheus", targets=[metrics.target])
    cluster.start()
    print(f"[bench] {args.rollouts} rollouts, {args.kills} kills each, seed {args.seed}, canary steps 20%/10s and "
          f"60%/6s, analysis every {INTERVAL_S}s, failureLimit {FAILURE_LIMIT}, scaleDownDelay {SCALE_DOWN_DELAY_S}s;"
          f" cluster in {cluster.directory}", flush=True)
    try:
        prometheus.start()
        ml = setup(cluster)
        chaos = Chaos(cluster, prometheus.url)
        ml.create(EXAMPLES["MLProject"])
        metrics.set(NAMESPACE, NAME, "v1", error_rate=0.0, latency_seconds=0.02)
        ml.create(restart_deployment("v1"))
        deadline = time.monotonic() + 120
        while ml.status("ModelDeployment", NAME).get("stableVersion") != "v1" and time.monotonic() < deadline:
            time.sleep(0.5)
        results = []
        for i in range(args.rollouts):
            stable = ml.status("ModelDeployment", NAME).get("stableVersion")
            bad = rng.random() < args.bad
            result = one_rollout(ml, chaos, metrics, rng, f"v{i + 2}", bad, stable, args.kills, args.timeout)
            results.append(result)
            print(json.dumps(result), flush=True)
        print(json.dumps({"totals": summary(results, args)}), flush=True)
        print("\ntarget (DESIGN.md): converges to the right final state with no orphans and no double promotion; "
              "a bad canary is rolled back within interval x failureLimit")
        stop_operator(cluster, chaos.process)
    finally:
        prometheus.stop()
        metrics.stop()
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

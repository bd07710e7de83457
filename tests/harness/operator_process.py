"""The operator as a separate process on a LocalCluster (demo, benchmarks, restart tests); most tests run it
in-process instead."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request

from .cluster import LocalCluster, Process, free_port


def start_operator(cluster: LocalCluster, **env: str) -> subprocess.Popen:
    """Start `python -m mlcycle_operator` against the cluster, record it with the cluster's processes (so
    stopping the cluster stops it), and return once its liveness endpoint answers."""
    health = free_port()
    log_path = cluster.directory / "logs" / "operator.log"
    settings = {"KUBECONFIG": str(cluster.kubeconfig_path), "MLCYCLE_METRICS_PORT": str(free_port()),
                "MLCYCLE_HEALTH_PORT": str(health), **env}
    with open(log_path, "ab") as log:
        operator = subprocess.Popen([sys.executable, "-m", "mlcycle_operator"], stdout=log,
                                    stderr=subprocess.STDOUT, env={**os.environ, **settings},
                                    start_new_session=True)
    cluster.processes.append(Process("operator", operator.pid, os.path.realpath(sys.executable), str(log_path)))
    cluster.save_state()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if operator.poll() is not None:
            raise RuntimeError(f"the operator exited at start; see {log_path}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1)
            return operator
        except OSError:
            time.sleep(0.2)
    stop_operator(cluster, operator)  # a half-started operator must not act behind the caller's back
    raise RuntimeError(f"the operator did not answer /healthz within 30 s; see {log_path}")


def stop_operator(cluster: LocalCluster, operator: subprocess.Popen, sig: int = signal.SIGKILL,
                  timeout: float = 15) -> int:
    """Signal the operator's process group (SIGKILL by default: no shutdown handlers, as a crash or an evicted
    pod), wait until it is gone, forget it in the cluster's records, and return its exit status."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(operator.pid, sig)
    try:
        code = operator.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(operator.pid, signal.SIGKILL)
        code = operator.wait(timeout=5)
    cluster.processes = [p for p in cluster.processes if p.pid != operator.pid]
    cluster.save_state()
    with open(cluster.directory / "logs" / "operator.log", "ab") as log:  # where one operator ends and the next starts
        log.write(f"----- operator {operator.pid} stopped by signal {signal.Signals(sig).name} -----\n".encode())
    return code

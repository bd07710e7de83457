"""Latency the router adds over calling the model server directly, measured open-loop.

Requests leave a separate load process (bench/openloop.py) at a fixed arrival rate whatever the server does, and
each latency is taken from the intended send time, so queueing cannot hide. The same load goes straight to the
upstream (baseline), through the router (canary 90/10 with 10% shadow to a third version) and through a second
router that also logs every answer (the prediction log), interleaved in the same run. Prints p50/p99/max of each,
the router's difference against the targets (<= 1 ms p50, <= 2 ms p99) and what the prediction log adds.

    .venv/bin/python bench/router_overhead.py [--rate 500] [--duration 20] [--rounds 2]
        [--upstream-cmd 'bentoml serve ... --port {port}']   # default: a minimal uvicorn server
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import openloop  # noqa: E402

PYTHON = sys.executable
BODY = json.dumps({"records": [{"tenure": 15, "plan": "pro", "monthly_charges": 70.5}]}).encode()
TARGET_P50_MS, TARGET_P99_MS = 1.0, 2.0


# --- the default upstream: the fastest honest HTTP server at hand --------------------------------------------


def serve_upstream(version: str, port: int) -> None:
    import uvicorn

    answer = json.dumps({"model": "churn", "version": version, "predictions": [0.3]}).encode()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]})
        await send({"type": "http.response.body", "body": answer})

    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", access_log=False,
                log_level="warning")


def run_load(url: str, rate: float, duration: float) -> tuple[list[float], int]:
    """One open-loop phase from a separate process (bench/openloop.py)."""
    load = openloop.run(url, BODY, rate, duration)
    return load.latencies.tolist(), load.errors


# --- orchestration --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} not ready within {timeout}s")


cpu_seconds = openloop.cpu_seconds


def percentiles(latencies: list[float]) -> dict[str, float]:
    import numpy as np

    ms = np.asarray(latencies) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "max": float(ms.max()),
            "n": int(ms.size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500, help="requests per second (default 500)")
    parser.add_argument("--duration", type=float, default=20, help="seconds per measured phase (default 20)")
    parser.add_argument("--rounds", type=int, default=2, help="baseline/router pairs, interleaved (default 2)")
    parser.add_argument("--upstream-cmd", default=None,
                        help="command starting one model server; {port} and {version} are filled in "
                             "(default: a minimal uvicorn server from this file)")
    parser.add_argument("--ready-path", default="/livez", help="path that answers 200 once a server is up")
    # Internal entry points: this file is also the upstream and the load process.
    parser.add_argument("--serve-upstream", nargs=2, metavar=("VERSION", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve_upstream:
        serve_upstream(args.serve_upstream[0], int(args.serve_upstream[1]))
        return
    procs: list[subprocess.Popen] = []
    workdir = Path(tempfile.mkdtemp(prefix="router-bench-"))
    try:
        upstreams = {}
        for version in ("v1", "v2", "v3"):
            port = free_port()
            cmd = (shlex.split(args.upstream_cmd.format(port=port, version=version)) if args.upstream_cmd
                   else [PYTHON, __file__, "--serve-upstream", version, str(port)])
            procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            upstreams[version] = f"http://127.0.0.1:{port}"
            wait_ready(upstreams[version] + args.ready_path, procs[-1])
        router_port = free_port()
        config = {"kind": "ModelDeployment", "name": "bench", "namespace": "bench", "port": router_port,
                  "routes": [
                      {"version": "v1", "weight": 90, "role": "stable", "url": upstreams["v1"]},
                      {"version": "v2", "weight": 10, "role": "candidate", "url": upstreams["v2"]},
                      {"version": "v3", "weight": 0, "role": "candidate", "shadowPercent": 10, "url": upstreams["v3"]},
                  ]}
        (workdir / "router.json").write_text(json.dumps(config))
        # The same router with the prediction log on (every answer logged, written each second), in its own
        # process, so the log's cost shows as the difference between the two.
        logged_port = free_port()
        (workdir / "router-log.json").write_text(json.dumps({
            **config, "port": logged_port,
            "predictionLog": {"uri": f"file://{workdir}/predictions", "sampleRate": 1.0, "flushSeconds": 1.0}}))
        env = {**os.environ, "MLCYCLE_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT / "runtime")}
        routers = {}
        for name, port, conf in (("router+log", logged_port, "router-log.json"),
                                 ("router", router_port, "router.json")):
            procs.append(subprocess.Popen([PYTHON, "-m", "mlcycle_runtime.router", "--config", str(workdir / conf),
                                           "--host", "127.0.0.1"], cwd=ROOT, env=env))
            routers[name] = procs[-1]
            wait_ready(f"http://127.0.0.1:{port}/readyz", procs[-1])
        router = f"http://127.0.0.1:{router_port}"

        targets = {"direct": upstreams["v1"] + "/predict", "router": router + "/predict",
                   "router+log": f"http://127.0.0.1:{logged_port}/predict"}
        print(f"open loop at {args.rate:g} req/s, {args.duration:g} s per phase, {args.rounds} round(s); "
              f"router: 90/10 canary + 10% shadow; upstream: {args.upstream_cmd or 'minimal uvicorn app'}")
        for url in targets.values():  # warm connections and code paths
            run_load(url, args.rate, 2)
        results: dict[str, list[float]] = {name: [] for name in targets}
        errors = dict.fromkeys(targets, 0)
        router_cpu = dict.fromkeys(routers, 0.0)
        upstream_cpu = 0.0
        for _ in range(args.rounds):
            for name, url in targets.items():
                proc = routers.get(name, procs[0])
                before = cpu_seconds(proc.pid), cpu_seconds(procs[0].pid)
                latencies, failed = run_load(url, args.rate, args.duration)
                after = cpu_seconds(proc.pid), cpu_seconds(procs[0].pid)
                if name in routers:
                    router_cpu[name] += after[0] - before[0]
                if name == "router":
                    upstream_cpu += after[1] - before[1]
                results[name] += latencies
                errors[name] += failed
                p = percentiles(latencies)
                print(f"  {name:7s} p50 {p['p50']:7.3f} ms  p99 {p['p99']:7.3f} ms  max {p['max']:8.3f} ms  "
                      f"({p['n']} requests, {failed} errors)")
        direct, routed = percentiles(results["direct"]), percentiles(results["router"])
        logged = percentiles(results["router+log"])
        print("all rounds:")
        for name, p in (("direct", direct), ("router", routed), ("router+log", logged)):
            print(f"  {name:10s} p50 {p['p50']:7.3f} ms  p99 {p['p99']:7.3f} ms  max {p['max']:8.3f} ms  "
                  f"({p['n']} requests, {errors[name]} errors)")
        per = {name: router_cpu[name] / max(len(results[name]), 1) * 1e6 for name in routers}
        print(f"CPU per routed request: router {per['router']:.0f} us (shadow calls included), with the prediction "
              f"log {per['router+log']:.0f} us; upstream v1 {upstream_cpu / max(len(results['router']), 1) * 1e6:.0f} "
              f"us; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"the prediction log (every answer) adds: p50 {logged['p50'] - routed['p50']:+.3f} ms, p99 "
              f"{logged['p99'] - routed['p99']:+.3f} ms, CPU {per['router+log'] - per['router']:+.0f} us per request")
        added50, added99 = routed["p50"] - direct["p50"], routed["p99"] - direct["p99"]
        print(f"router adds: p50 {added50:+.3f} ms (target <= {TARGET_P50_MS} ms: "
              f"{'met' if added50 <= TARGET_P50_MS else 'NOT met'}), p99 {added99:+.3f} ms (target <= "
              f"{TARGET_P99_MS} ms: {'met' if added99 <= TARGET_P99_MS else 'NOT met'}), "
              f"max {routed['max'] - direct['max']:+.3f} ms")
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()

"""Serving latency and throughput under open-loop load: mlcycle's model server without and with adaptive batching,
beside a stock `bentoml serve` of the same model, and through the router.

Two XGBoost churn models are published as versions: a light one (100 trees of depth 6) and a heavy one (500 trees
of depth 8; XGBoost's fixed cost per call, about 0.2-0.4 ms, still outweighs its per-row cost at one row). Each
server runs alone, as its own process tree pinned to the first CPUs, while a separate load process (pinned to the
last CPU where `taskset` exists: bench/openloop.py) sends requests at fixed rates and takes each latency from the
request's intended send time, so queueing shows. The router, when measured, runs on the load's CPU (in a cluster
it is a pod of its own), so the server keeps its CPU.
Rates rise until a server saturates. Prints p50/p99/p99.9, the server's and the load's CPU time per request, the
highest rate each sustains, and the issue's bars (met or not); asserts nothing.

    .venv/bin/python bench/serving_latency.py [--seconds 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import openloop  # noqa: E402
from examples.churn.generate import CATEGORICAL, NUMERIC, generate  # noqa: E402
from tests.harness import server_process  # noqa: E402
from tests.harness.cluster import free_port  # noqa: E402

TARGETS = "DESIGN.md target: p50 <= 5 ms, p99 <= 10 ms, >= 500 req/s per replica"
SUSTAINED_P99 = 0.100  # a rate is sustained while p99 stays under this, nothing fails and the load keeps up
ONE_ROW_RATES = (50, 100, 200, 300, 400, 500, 700, 1000, 1200, 1400, 1700, 2000)
BATCH_RATES = (10, 25, 50, 100, 200, 300, 400)
BATCHING = {"maxBatchSize": 32, "maxLatencyMs": 5}
MODELS = {"light": {"trees": 100, "depth": 6}, "heavy": {"trees": 500, "depth": 8}}

STOCK_SERVICE = '''
import os
from typing import Any

import bentoml
from mlcycle_runtime.model import ModelCard
import json
import subprocess

CARD = ModelCard.from_json(json.load(open(os.environ["BENCH_CARD"])))


@bentoml.service(workers=1)
class Stock:
    def __init__(self) -> None:
        self.booster = bentoml.xgboost.load_model(CARD.tag)

    @bentoml.api
    def predict(self, records: list[dict[str, Any]]) -> list[float]:
        return self.booster.inplace_predict(CARD.features.encode_records(records)).tolist()
'''


def publish_model(tmp: Path, name: str, trees: int, depth: int) -> tuple[str, list[dict]]:
    import xgboost as xgb

    from mlcycle_runtime import reference
    from mlcycle_runtime.model import ModelCard, Predictor, save_version
    from mlcycle_runtime.schema import FeatureSchema

    frame = generate(rows=20_000)
    features = [*NUMERIC, *CATEGORICAL]
    schema = FeatureSchema.infer(frame, features)
    matrix = schema.encode_frame(frame)
    booster = xgb.train({"max_depth": depth, "eta": 0.1, "objective": "binary:logistic"},
                        xgb.DMatrix(matrix, label=frame["churned"].to_numpy()), trees)
    card = ModelCard(f"churn-{name}", "v1", "xgboost", "binary", schema, "churned")
    ref = reference.build(frame, schema, Predictor(booster, "xgboost", "binary").predict(matrix))
    uri = save_version(booster, card, ref, str(tmp / "store" / f"churn-{name}" / "v1"))
    (tmp / f"card-{name}.json").write_text(json.dumps(card.to_json()))
    records = [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
               for row in frame[features].head(32).astype(object).to_dict(orient="records")]
    return uri, records


def start(argv: list[str], env: dict[str, str], url: str, log: Path) -> subprocess.Popen:
    try:
        return server_process.start_http(argv, env, url, log)
    except server_process.NotReady as err:
        raise SystemExit(str(err)) from err


stop = server_process.stop_group


def server_cpus() -> str | None:
    """The CPUs the measured processes are pinned to: all but the load's."""
    spare = openloop.spare_cpu()
    return None if spare is None else (f"0-{spare - 1}" if spare > 1 else "0")


@dataclass
class Phase:
    name: str
    rows: int  # per request
    load: openloop.Load
    server_cpu: float  # CPU seconds of the measured process trees during the phase

    @property
    def ok(self) -> bool:
        return (self.load.pct(99) < SUSTAINED_P99 and self.load.errors == 0
                and self.load.sent_rate >= 0.95 * self.load.rate
                and self.load.latencies.size >= 0.95 * self.load.rate * self.load.duration)

    def line(self) -> str:
        n = max(self.load.latencies.size + self.load.errors, 1)
        return (f"  {self.name:<30} {self.load.rate:>6.0f} req/s x{self.rows:<3} p50 {self.load.pct(50) * 1e3:7.2f}  "
                f"p99 {self.load.pct(99) * 1e3:8.2f}  p99.9 {self.load.pct(99.9) * 1e3:8.2f} ms  "
                f"errors {self.load.errors:<5} CPU/req server {self.server_cpu / n * 1e6:6.0f} us  "
                f"load {self.load.cpu / n * 1e6:5.0f} us")


def sweep(name: str, url: str, body: bytes, rows: int, rates: tuple[float, ...], seconds: float,
          pids: list[int]) -> list[Phase]:
    openloop.run(url, body, 50 if rows == 1 else 10, 2)  # warm up code paths and connections
    phases = []
    for rate in rates:
        before = sum(openloop.cpu_seconds(p) for p in pids)
        load = openloop.run(url, body, rate, seconds)
        phase = Phase(name, rows, load, sum(openloop.cpu_seconds(p) for p in pids) - before)
        phases.append(phase)
        print(phase.line(), flush=True)
        if not phase.ok and (load.pct(99) > 10 * SUSTAINED_P99 or load.errors > 0.1 * rate * seconds
                             or load.latencies.size < 0.8 * rate * seconds):
            break  # saturated: higher rates only build longer queues
    return phases


def sustained(phases: list[Phase]) -> float:
    return max((p.load.rate for p in phases if p.ok), default=0.0)


def at(phases: list[Phase], rate: float) -> Phase | None:
    return next((p for p in phases if p.load.rate == rate), None)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per rate (default 5)")
    parser.add_argument("--quick", action="store_true", help="the light model only, no stock server or router")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mlcycle-bench-serve-"))
    os.environ["BENTOML_HOME"] = str(tmp / "bentoml")
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "MLCYCLE_LOG_LEVEL": "WARNING",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "runtime"), str(ROOT), str(tmp)])}
    (tmp / "stock_service.py").write_text(STOCK_SERVICE)
    cpus = server_cpus()
    print(f"{os.cpu_count()} CPUs: servers on CPU {cpus or 'any'}, load process on CPU "
          f"{openloop.spare_cpu() if cpus else 'any'}; load average {os.getloadavg()[0]:.1f}; {TARGETS}")
    models = {"light": MODELS["light"]} if args.quick else MODELS
    results: dict[str, list[Phase]] = {}
    for model, shape in models.items():
        uri, records = publish_model(tmp, model, shape["trees"], shape["depth"])
        one = json.dumps({"records": records[:1]}).encode()
        many = json.dumps({"records": records[:32]}).encode()
        runs = [(f"{model} mlcycle", {"enabled": False}, [(1, one, ONE_ROW_RATES), (32, many, BATCH_RATES)]),
                (f"{model} mlcycle+batching", {"enabled": True, **BATCHING}, [(1, one, ONE_ROW_RATES)])]
        for name, batching, loads in runs:
            port = free_port()
            conf = tmp / f"{name.replace(' ', '_')}.json"
            conf.write_text(json.dumps({"name": "bench", "model": {"uri": uri}, "port": port, "batching": batching}))
            argv = openloop.pinned([sys.executable, "-m", "mlcycle_runtime.serve", "--config", str(conf),
                                    "--host", "127.0.0.1"], cpus)
            url = f"http://127.0.0.1:{port}"
            process = start(argv, env, url, tmp / f"{name.replace(' ', '_')}.log")
            try:
                for rows, body, rates in loads:
                    label = name if rows == 1 else f"{name} 32-row"
                    results[label] = sweep(label, f"{url}/predict", body, rows, rates, args.seconds, [process.pid])
                if model == "light" and not batching["enabled"] and not args.quick:
                    results["light mlcycle via router"] = through_router(tmp, env, url, one, args.seconds,
                                                                         process.pid)
            finally:
                stop(process)
        if not args.quick:
            port = free_port()
            name = f"{model} stock bentoml serve"
            argv = openloop.pinned([sys.executable, "-m", "bentoml", "serve", "stock_service:Stock", "--host",
                                    "127.0.0.1", "--port", str(port), "--working-dir", str(tmp)], cpus)
            process = start(argv, {**env, "BENCH_CARD": str(tmp / f"card-{model}.json")},
                            f"http://127.0.0.1:{port}", tmp / f"stock-{model}.log")
            try:
                results[name] = sweep(name, f"http://127.0.0.1:{port}/predict", one, 1, ONE_ROW_RATES,
                                      args.seconds, [process.pid])
            finally:
                stop(process)
    report(results, models)
    return 0


def through_router(tmp: Path, env: dict[str, str], upstream: str, body: bytes, seconds: float,
                   server_pid: int) -> list[Phase]:
    """The same one-row load through the router in front of the unbatched server, for the tail at the target
    rate. In a cluster the router is its own pod: here it runs on the load's CPU, beside the load process, so the
    server keeps its CPU to itself (on a 2-CPU machine there is no third)."""
    port = free_port()
    conf = tmp / "router.json"
    conf.write_text(json.dumps({"kind": "ModelDeployment", "name": "bench", "namespace": "bench", "port": port,
                                "routes": [{"version": "v1", "weight": 100, "role": "stable", "url": upstream}]}))
    spare = openloop.spare_cpu()
    argv = openloop.pinned([sys.executable, "-m", "mlcycle_runtime.router", "--config", str(conf), "--host",
                            "127.0.0.1"], None if spare is None else str(spare))
    process = server_process.start_http(argv, env, f"http://127.0.0.1:{port}", tmp / "router.log")
    try:
        return sweep("light mlcycle via router", f"http://127.0.0.1:{port}/predict", body, 1, (100, 300, 500, 700),
                     seconds, [process.pid, server_pid])
    finally:
        stop(process)


def report(results: dict[str, list[Phase]], models: dict) -> None:
    print(f"\nhighest sustained rate (p99 < {SUSTAINED_P99 * 1e3:.0f} ms, no errors, load keeping up):")
    for name, phases in results.items():
        rows = phases[0].rows if phases else 1
        print(f"  {name:<32} {sustained(phases):>6.0f} req/s  ({sustained(phases) * rows:>7.0f} rows/s)")
    print("\nthe bars (issue #12):")
    latency_ms = BATCHING["maxLatencyMs"]
    for model in models:
        plain, batched = results.get(f"{model} mlcycle", []), results.get(f"{model} mlcycle+batching", [])
        many = results.get(f"{model} mlcycle 32-row", [])
        low_p, low_b = at(plain, 50), at(batched, 50)
        if low_p and low_b:
            added = (low_b.load.pct(50) - low_p.load.pct(50)) * 1e3
            print(f"  {model}: at 50 req/s batching adds {added:+.2f} ms p50 (bar: <= maxLatencyMs + 1 = "
                  f"{latency_ms + 1} ms): {verdict(added <= latency_ms + 1)}")
        saturates = sustained(plain)
        print(f"  {model}: unbatched sustains {saturates:.0f} req/s, batched {sustained(batched):.0f} req/s "
              f"(bar: >= 1.5x = {1.5 * saturates:.0f}): {verdict(sustained(batched) >= 1.5 * saturates)}")
        print(f"  {model}: 32-row requests {sustained(many) * 32:.0f} rows/s vs one-row {saturates:.0f} rows/s "
              f"(bar: >= 3x): {verdict(sustained(many) * 32 >= 3 * saturates)}")
    for name in ("light mlcycle", "light mlcycle via router"):
        phase = at(results.get(name, []), 500)
        if phase is not None:
            print(f"  tail, {name} at 500 req/s: p99 {phase.load.pct(99) * 1e3:.2f} ms, p99.9 "
                  f"{phase.load.pct(99.9) * 1e3:.2f} ms (bar: p99 <= 10 ms): {verdict(phase.load.pct(99) <= 0.010)}")
    print(TARGETS)


if __name__ == "__main__":
    sys.exit(main())

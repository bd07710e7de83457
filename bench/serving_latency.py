"""One-row prediction latency of the model server under open-loop load, beside a stock `bentoml serve` baseline.

A small XGBoost churn model is published as a version; three servers run it in turn on loopback, each its own
process: mlcycle's server without and with adaptive batching, and a minimal BentoML 1.2-style service around the
same model (no validation, no metrics of ours). This process sends one-row requests at a fixed arrival rate,
whatever the server does, and takes each latency from the request's intended send time, so queueing shows.
Prints p50/p99/max per rate and the highest rate each server sustains; asserts nothing.

    .venv/bin/python bench/serving_latency.py [--rates 50,100,200,300,400,500] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from examples.churn.generate import CATEGORICAL, NUMERIC, generate  # noqa: E402
from tests.harness import server_process  # noqa: E402

TARGETS = "DESIGN.md target: p50 <= 5 ms, p99 <= 10 ms, >= 500 req/s per replica"
SUSTAINED_P99 = 0.100  # a rate is sustained while p99 stays under this and the sent rate keeps up
REQUEST_TIMEOUT = 10.0  # a request unanswered by then counts as an error, not as a latency

STOCK_SERVICE = '''
import os
from typing import Any

import bentoml
from mlcycle_runtime.model import ModelCard
import json

CARD = ModelCard.from_json(json.load(open(os.environ["BENCH_CARD"])))


@bentoml.service(workers=1)
class Stock:
    def __init__(self) -> None:
        self.booster = bentoml.xgboost.load_model(CARD.tag)

    @bentoml.api
    def predict(self, records: list[dict[str, Any]]) -> list[float]:
        return self.booster.inplace_predict(CARD.features.encode_records(records)).tolist()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def publish_model(tmp: Path) -> tuple[str, dict]:
    import xgboost as xgb

    from mlcycle_runtime import reference
    from mlcycle_runtime.model import ModelCard, Predictor, save_version
    from mlcycle_runtime.schema import FeatureSchema

    frame = generate(rows=20_000)
    features = [*NUMERIC, *CATEGORICAL]
    schema = FeatureSchema.infer(frame, features)
    matrix = schema.encode_frame(frame)
    booster = xgb.train({"max_depth": 6, "eta": 0.1, "objective": "binary:logistic"},
                        xgb.DMatrix(matrix, label=frame["churned"].to_numpy()), 100)
    card = ModelCard("churn-bench", "v1", "xgboost", "binary", schema, "churned")
    ref = reference.build(frame, schema, Predictor(booster, "xgboost", "binary").predict(matrix))
    uri = save_version(booster, card, ref, str(tmp / "store" / "churn-bench" / "v1"))
    (tmp / "card.json").write_text(json.dumps(card.to_json()))
    record = {k: (None if isinstance(v, float) and v != v else v)
              for k, v in frame[features].iloc[0].astype(object).to_dict().items()}
    return uri, record


def start(argv: list[str], env: dict[str, str], url: str, log: Path) -> subprocess.Popen:
    try:
        return server_process.start_http(argv, env, url, log)
    except server_process.NotReady as err:
        raise SystemExit(str(err)) from err


stop = server_process.stop_group


async def open_loop(url: str, body: bytes, rate: float, seconds: float) -> dict[str, float]:
    """Send at `rate` req/s for `seconds`; latency of each from its intended send time."""
    import aiohttp

    count = int(rate * seconds)
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers={"content-type": "application/json"}) as session:
        loop = asyncio.get_running_loop()

        async def one(intended: float) -> None:
            nonlocal errors
            try:
                async with session.post(url, data=body) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                        return
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
                return
            latencies.append(loop.time() - intended)

        start = loop.time() + 0.05
        tasks = []
        for i in range(count):
            intended = start + i / rate
            delay = intended - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(intended)))
        sent_in = loop.time() - start
        await asyncio.gather(*tasks)
    lat = np.asarray(latencies) if latencies else np.asarray([np.nan])
    return {"rate": rate, "sent_rate": count / max(sent_in, 1e-9), "ok": len(latencies), "errors": errors,
            "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)), "max": float(lat.max())}


def measure(name: str, url: str, body: bytes, rates: list[float], seconds: float) -> list[dict]:
    asyncio.run(open_loop(url, body, 50, 2))  # warm up (the batcher trains its model of latency here)
    rows = []
    for rate in rates:
        result = asyncio.run(open_loop(url, body, rate, seconds))
        result["server"] = name
        rows.append(result)
        print(f"  {name:<22} {rate:>6.0f} req/s  p50 {result['p50'] * 1e3:7.2f} ms  p99 {result['p99'] * 1e3:8.2f} ms  "
              f"max {result['max'] * 1e3:8.2f} ms  errors {result['errors']}", flush=True)
        if result["p99"] > 10 * SUSTAINED_P99 or result["errors"] > 0.1 * rate * seconds:
            break  # saturated: higher rates only build longer queues
    return rows


def sustained(rows: list[dict]) -> float:
    ok = [r["rate"] for r in rows
          if r["p99"] < SUSTAINED_P99 and r["errors"] == 0 and r["sent_rate"] >= 0.95 * r["rate"]]
    return max(ok, default=0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="50,100,200,300,400,500,700")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="mlcycle-bench-serve-"))
    os.environ["BENTOML_HOME"] = str(tmp / "bentoml")
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "BENCH_CARD": str(tmp / "card.json"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp)])}
    uri, record = publish_model(tmp)
    body = json.dumps({"records": [record]}).encode()
    (tmp / "stock_service.py").write_text(STOCK_SERVICE)
    print(f"one-row requests to a {os.cpu_count()}-core machine; load generator in this process; {TARGETS}")

    servers = []
    for name, batching in (("mlcycle", False), ("mlcycle+batching", True)):
        port = free_port()
        conf = tmp / f"{name}.json"
        conf.write_text(json.dumps({"name": "bench", "model": {"uri": uri}, "port": port,
                                    "batching": {"enabled": batching, "maxBatchSize": 32, "maxLatencyMs": 5}}))
        argv = [sys.executable, "-m", "mlcycle_runtime.serve", "--config", str(conf), "--host", "127.0.0.1"]
        servers.append((name, argv, f"http://127.0.0.1:{port}"))
    port = free_port()
    servers.append(("stock bentoml serve", [sys.executable, "-m", "bentoml", "serve", "stock_service:Stock",
                                            "--host", "127.0.0.1", "--port", str(port), "--working-dir", str(tmp)],
                    f"http://127.0.0.1:{port}"))

    results: dict[str, list[dict]] = {}
    for name, argv, url in servers:
        process = start(argv, env, url, tmp / f"{name.replace(' ', '_')}.log")
        try:
            results[name] = measure(name, f"{url}/predict", body, rates, args.seconds)
        finally:
            stop(process)

    print(f"\n{'server':<22} {'rate':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>6}")
    for name, rows in results.items():
        for r in rows:
            print(f"{name:<22} {r['rate']:>6.0f} {r['p50'] * 1e3:>8.2f} {r['p99'] * 1e3:>8.2f} {r['max'] * 1e3:>8.2f} "
                  f"{r['errors']:>6}")
    print(f"\nhighest sustained rate (p99 < {SUSTAINED_P99 * 1e3:.0f} ms, no errors, generator keeping up):")
    for name, rows in results.items():
        print(f"  {name:<22} {sustained(rows):>6.0f} req/s")
    print(TARGETS)
    return 0


if __name__ == "__main__":
    sys.exit(main())

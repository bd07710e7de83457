"""Batch scoring at scale: rows/s and peak memory of the BatchPrediction scorer (`mlcycle_runtime.batch`: stream
record batches, check and encode them as the model server does, predict, write Parquet parts with the passthrough
columns, prediction, model version and run id, publish) beside a plain in-process loop on the same Parquet in the
same run (read the file whole with pandas, `FeatureSchema.encode_frame`, `predict`; no checks, nothing written).

Data: the churn example's columns (customer id, event time, four numeric and three categorical features) drawn at
random, written to Parquet in row groups of 100,000; the model: XGBoost, 50 rounds of depth 6, trained on the
example's generator. Each measurement runs in a fresh process (peak RSS is that process's, above its RSS once the
model is loaded); XGBoost uses every core in both. Prints a table with the DESIGN.md target; asserts nothing.

    .venv/bin/python bench/batch_scoring.py                          # 1M and 10M rows
    .venv/bin/python bench/batch_scoring.py --rows 200000,1000000    # quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the churn example's generator
TARGET_SHARE = 0.80  # of the plain loop's rows/s per core


def write_input(path: Path, rows: int, seed: int = 0) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from examples.churn.generate import CONTRACTS, PLANS, REGIONS

    rng = np.random.default_rng(seed)
    step = 100_000
    with pq.ParquetWriter(path, pa.schema([
            ("customer_id", pa.int64()), ("event_timestamp", pa.timestamp("us")), ("tenure_months", pa.int64()),
            ("monthly_charges", pa.float64()), ("support_calls", pa.int64()), ("data_usage_gb", pa.float64()),
            ("contract", pa.string()), ("plan", pa.string()), ("region", pa.string())])) as writer:
        for start in range(0, rows, step):
            k = min(step, rows - start)
            writer.write_table(pa.table({
                "customer_id": np.arange(start, start + k) + 100_000,
                "event_timestamp": np.full(k, np.datetime64("2026-12-01T00:00:00", "us")),
                "tenure_months": rng.integers(0, 72, k), "monthly_charges": rng.uniform(20, 120, k).round(2),
                "support_calls": rng.poisson(1.5, k), "data_usage_gb": rng.gamma(2.0, 5.0, k).round(2),
                "contract": rng.choice(CONTRACTS, k), "plan": rng.choice(PLANS, k), "region": rng.choice(REGIONS, k),
            }), row_group_size=step)


def model():
    """The churn model the measurements share (trained in each process the same way: seeded data, fixed rounds)."""
    import xgboost as xgb

    from examples.churn.generate import CATEGORICAL, NUMERIC, generate
    from mlcycle_runtime.model import LoadedModel, ModelCard, Predictor
    from mlcycle_runtime.schema import FeatureSchema

    frame = generate(rows=20_000, seed=1)
    schema = FeatureSchema.infer(frame, [*NUMERIC, *CATEGORICAL])
    booster = xgb.train({"max_depth": 6, "objective": "binary:logistic", "seed": 0},
                        xgb.DMatrix(schema.encode_frame(frame), label=frame["churned"]), 50)
    card = ModelCard("churn-classifier", "bench-v1", "xgboost", "binary", schema, "churned")
    return LoadedModel(card, None, Predictor(booster, "xgboost", "binary"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(mode: str, path: str, out: str, batch_size: int) -> dict:
    """One measurement in this process: seconds, rows and the peak RSS above the RSS with the model loaded."""
    loaded = model()
    base = rss_bytes()
    peak, done = [base], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    threading.Thread(target=sample, daemon=True).start()
    start = time.perf_counter()
    if mode == "plain":
        import pandas as pd

        frame = pd.read_parquet(path)
        predictions = loaded.predictor.predict(loaded.card.features.encode_frame(frame))
        rows = len(predictions)
    else:
        from mlcycle_runtime import config as cfg
        from mlcycle_runtime.batch.run import BatchRun
        from mlcycle_runtime.report import Reporter

        conf = cfg.BatchConfig.model_validate({
            "name": "bench", "model": {"uri": "file:///bench"}, "input": {"uri": path, "passthrough": ["customer_id"]},
            "output": {"uri": out}, "batchSize": batch_size})
        reporter = Reporter("BatchPrediction", "bench", "bench", "report", report_dir=out + "-report", cluster=False)
        if BatchRun(conf, reporter, loader=lambda uri: loaded).execute() != 0:
            raise SystemExit(f"the scorer failed: {reporter.last}")
        rows = reporter.last["rowsScored"]
    seconds = time.perf_counter() - start
    done.set()
    return {"mode": mode, "rows": rows, "seconds": seconds, "peak_mib": (peak[0] - base) / 2**20}


def run_child(mode: str, path: Path, out: Path, batch_size: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, __file__, "--child", mode, str(path), str(out), str(batch_size)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{mode} on {path.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1000000,10000000", help="comma-separated input sizes")
    parser.add_argument("--batch-size", type=int, default=65536, help="the scorer's batchSize")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "INPUT", "OUT", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, path, out, batch = args.child
        print(json.dumps(measure(mode, path, out, int(batch))))
        return
    cores = os.cpu_count() or 1
    print(f"batch scoring: XGBoost (50 rounds, depth 6), churn features, batchSize {args.batch_size}, "
          f"{cores} cores; plain = pandas read whole + encode_frame + predict")
    print(f"{'rows':>11} {'scorer rows/s':>14} {'plain rows/s':>13} {'share':>7} {'scorer peak MiB':>16} "
          f"{'plain peak MiB':>15}")
    with tempfile.TemporaryDirectory(prefix="mlcycle-bench-batch-") as tmp:
        for rows in (int(r) for r in args.rows.split(",")):
            path = Path(tmp) / f"in-{rows}.parquet"
            write_input(path, rows)
            scorer = run_child("scorer", path, Path(tmp) / f"out-{rows}", args.batch_size)
            plain = run_child("plain", path, Path(tmp) / f"plain-{rows}", args.batch_size)
            s_rate, p_rate = scorer["rows"] / scorer["seconds"], plain["rows"] / plain["seconds"]
            print(f"{rows:>11,} {s_rate:>14,.0f} {p_rate:>13,.0f} {s_rate / p_rate:>6.0%} "
                  f"{scorer['peak_mib']:>16.1f} {plain['peak_mib']:>15.1f}", flush=True)
            path.unlink()
    print(f"target: scorer >= {TARGET_SHARE:.0%} of the plain loop's rows/s per core (both use every core here); "
          "scorer peak memory flat as rows grow")


if __name__ == "__main__":
    main()

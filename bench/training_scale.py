"""Throughput of the trainer's data-parallel XGBoost fit (Ray Train) at 1, 2 and 4 workers, beside single-process
XGBoost on the same rows in the same run, and the fixed costs around it: starting Ray, putting the data in its
object store, and starting a Ray Train worker group (a fit of one round).

The fit is the runtime's own (`learners.fit_distributed`, the refit a TrainingJob with `workers > 1` runs) on the
churn example's data scaled up (default 2 M rows), encoded as the trainer encodes it. Ray runs locally with every
CPU of this machine; each worker gets CPUs / workers of them (XGBoost threads likewise). On one machine the
workers share its cores, so the speed-up is bounded by them: the figures show what the distribution costs, and
on a RayJob each worker pod brings its own cores. Asserts nothing.

    .venv/bin/python bench/training_scale.py [--rows 2000000] [--rounds 50] [--workers 1,2,4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from examples.churn.generate import CATEGORICAL, NUMERIC, generate  # noqa: E402

PARAMS = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": 6, "eta": 0.1}


def encoded(rows: int):
    from mlcycle_runtime.schema import FeatureSchema
    from mlcycle_runtime.train import learners

    frame = generate(rows=rows, days=180, seed=3)
    features = [*NUMERIC, *CATEGORICAL]
    schema = FeatureSchema.infer(frame, features)
    x = schema.encode_frame(frame)
    y = frame["churned"].to_numpy(dtype="int64")
    cut = max(1, len(x) // 100)  # a sliver for validation: the refit trains on train + validation anyway
    return learners.Data(x[cut:], y[cut:], x[:cut], y[:cut])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]

    import ray

    from mlcycle_runtime.train import cluster, learners

    cpus = cluster.machine_cpus()
    started = time.perf_counter()
    data = encoded(args.rows)
    rows = len(data.x_train) + len(data.x_val)
    print(f"training_scale: {rows:,} rows x {data.x_train.shape[1]} features, {args.rounds} rounds, "
          f"{cpus} CPUs (data made in {time.perf_counter() - started:.1f}s)", flush=True)
    results = []

    import numpy as np

    x, y = np.concatenate([data.x_train, data.x_val]), np.concatenate([data.y_train, data.y_val])
    single = learners.Learner("xgboost", "binary", dict(PARAMS), threads=cpus)
    t0 = time.perf_counter()
    learners.fit(single, {}, x, y, rounds=args.rounds)
    baseline = time.perf_counter() - t0
    results.append((f"xgboost, one process, {cpus} threads", baseline, None))
    print(f"  single-process xgboost: {baseline:.1f}s", flush=True)

    cluster.quiet()
    t0 = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             _temp_dir=str(Path(tempfile.gettempdir()) / "ray-bench"))
    ray_start = time.perf_counter() - t0
    t0 = time.perf_counter()
    data_ref = ray.put(data)
    put = time.perf_counter() - t0
    print(f"  ray.init: {ray_start:.1f}s; data into the object store: {put:.1f}s", flush=True)
    try:
        with tempfile.TemporaryDirectory() as storage:
            for workers in worker_counts:
                per_worker = cpus / workers
                learner = learners.Learner("xgboost", "binary", dict(PARAMS), threads=max(1, int(per_worker)))
                resources = {"CPU": per_worker}
                t0 = time.perf_counter()
                learners.fit_distributed(learner, {}, data_ref, workers, resources, storage, f"fixed-{workers}",
                                         rounds=1, include_validation=True)
                fixed = time.perf_counter() - t0
                t0 = time.perf_counter()
                learners.fit_distributed(learner, {}, data_ref, workers, resources, storage, f"fit-{workers}",
                                         rounds=args.rounds, include_validation=True)
                seconds = time.perf_counter() - t0
                results.append((f"Ray Train, {workers} worker(s) x {per_worker:g} CPU", seconds, fixed))
                print(f"  {workers} worker(s): {seconds:.1f}s (one-round fit {fixed:.1f}s)", flush=True)
    finally:
        ray.shutdown()

    print()
    print(f"{'fit':40} {'seconds':>8} {'rows/s':>10} {'vs 1 process':>12} {'fixed cost':>10} "
          f"{'rounds after it':>16}")
    for name, seconds, fixed in results:
        # Past the one-round fit: the other rounds alone, in row-rounds per second (noisy when they are short).
        after = "" if fixed is None else (f"{rows * (args.rounds - 1) / (seconds - fixed):12,.0f} r/s"
                                          if seconds - fixed > 1 else "under 1 s")
        print(f"{name:40} {seconds:8.1f} {rows / seconds:10,.0f} {baseline / seconds:11.2f}x "
              f"{'' if fixed is None else f'{fixed:9.1f}s':>10} {after:>16}")
    print(f"(one process, rounds alone: {rows * args.rounds / baseline:,.0f} row-rounds/s)")
    print(f"\nfixed costs: ray.init {ray_start:.1f}s, ray.put of the data {put:.1f}s; 'fixed cost' is a one-round "
          f"fit (worker group start, data fetch, one round, checkpoint). A RayJob adds pod start: see the cluster "
          f"tier's 'TrainingJob created -> Ray workers running' line.")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    raise SystemExit(main())

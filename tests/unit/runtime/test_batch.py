"""The batch scorer on real Parquet: the rows it writes, the rows it refuses (and why), the same numbers as the
model server for the same rows, a run directory that is complete or absent, and memory bounded by the batch size."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression

from mlcycle_runtime import config as cfg
from mlcycle_runtime import storage
from mlcycle_runtime.batch import columns
from mlcycle_runtime.batch.run import BatchRun
from mlcycle_runtime.report import Reporter
from tests.unit.runtime.test_serve import SCHEMA, loaded, server

ROOT = Path(__file__).resolve().parents[3]


def rows(n: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"customer_id": np.arange(n) + 100_000,
                         "monthly_charges": rng.uniform(20, 120, n).round(2),
                         "tenure_months": rng.integers(0, 72, n),
                         "plan": rng.choice(["basic", "premium", "standard"], n)})


def batch_config(tmp: Path, input_uri: str, **spec) -> cfg.BatchConfig:
    return cfg.BatchConfig.model_validate({
        "name": "nightly", "namespace": "ns", "model": {"name": "churn", "version": "v1", "uri": "file:///m/churn/v1"},
        "input": {"uri": input_uri}, "output": {"uri": f"file://{tmp}/out"}, **spec})


def run(tmp: Path, frame_or_table, model=None, run_id: str = "run-1", passthrough: tuple[str, ...] = (),
        **spec) -> tuple[int, dict]:
    table = frame_or_table if isinstance(frame_or_table, pa.Table) else pa.Table.from_pandas(frame_or_table,
                                                                                            preserve_index=False)
    path = tmp / "input.parquet"
    pq.write_table(table, path, row_group_size=spec.pop("row_group_size", 1000))
    rows_per_part = spec.pop("parts", 10**6)
    conf = batch_config(tmp, f"file://{path}", **spec)
    conf.input.passthrough = passthrough
    reporter = Reporter("BatchPrediction", "nightly", "ns", "report", report_dir=tmp / "reports", cluster=False)
    model = model or loaded()
    code = BatchRun(conf, reporter, loader=lambda uri: model, run_id=run_id, rows_per_part=rows_per_part).execute()
    return code, json.loads(reporter.path.read_text())


def test_a_run_writes_every_row_with_its_prediction_and_the_columns_passed_through(tmp_path):
    frame = rows(5000)
    code, report = run(tmp_path, frame, batchSize=512)
    assert code == 0, report
    out = tmp_path / "out" / "run-1"
    assert (out / storage.COMPLETE).exists() and not list((tmp_path / "out").glob(".*"))
    written = pq.read_table(out).to_pandas()
    assert list(written.columns) == ["customer_id", "prediction", "model_version", "run_id"]
    assert sorted(written.customer_id) == list(frame.customer_id)
    assert set(written.model_version) == {"v1"} and set(written.run_id) == {"run-1"}
    expected = loaded().predictor.predict(SCHEMA.encode_frame(frame))
    np.testing.assert_array_equal(written.sort_values("customer_id").prediction.to_numpy(), expected)
    assert report["phase"] == "Succeeded" and report["rowsScored"] == 5000 and report["rowsRefused"] == 0
    assert report["output"] == f"file://{tmp_path}/out/run-1" and report["fingerprint"].startswith("sha256:")
    assert report["modelVersion"] == "v1" and report["rowsPerSecond"] > 0 and report["durationSeconds"] >= 0


def test_batch_and_online_give_the_same_number_for_the_same_row(tmp_path):
    """The server's handler path (validate, encode, predict) and the batch path agree: exactly for xgboost, and for
    a learner that refuses missing values (whose rows are refused in both, for the same reason) to float32's last
    bit: a linear model's float32 matrix product rounds differently for 1 row and for 64 (the server's own answer
    for a row moves by as much between a one-record request and a 64-record one)."""
    frame = rows(300, seed=7).astype({"plan": object})
    frame.loc[3, "plan"] = "enterprise"  # unseen: NaN for both
    frame.loc[5, "monthly_charges"] = None
    for model in (loaded(), loaded("sklearn", learner=LogisticRegression(max_iter=500))):
        code, report = run(tmp_path, frame, model=model, run_id=f"agree-{model.card.framework}",
                           maxInvalidFraction=0.5, batchSize=64)
        assert code == 0, report
        written = pq.read_table(tmp_path / "out" / f"agree-{model.card.framework}").to_pandas()
        batch = dict(zip(written.customer_id, written.prediction, strict=True))
        records = frame.drop(columns="customer_id").astype(object).where(frame.notna(), None).to_dict("records")
        srv = server(model)
        for i, record in enumerate(records):
            status, answer = asyncio.run(srv.handle(None, payload={"records": [record]}))
            customer = int(frame.customer_id[i])
            if status == 200:
                if model.card.framework == "xgboost":
                    assert batch[customer] == answer["predictions"][0], record
                else:
                    assert batch[customer] == pytest.approx(answer["predictions"][0], rel=1e-6, abs=1e-6), record
            else:
                assert customer not in batch and status == 422, (record, answer)
        if model.card.framework == "sklearn":
            invalid = pq.read_table(tmp_path / "out" / "agree-sklearn" / "_invalid").to_pandas()
            assert dict(zip(invalid.customer_id, invalid.reason, strict=True)) == {
                100_003: "plan: unseen category", 100_005: "monthly_charges: null"}


def test_rows_the_model_cannot_score_are_written_aside_with_the_reason(tmp_path):
    frame = rows(100)
    table = pa.Table.from_pandas(frame.drop(columns="tenure_months"), preserve_index=False).append_column(
        "tenure_months", pa.array([str(v) for v in frame.tenure_months]))
    code, report = run(tmp_path, table, maxInvalidFraction=1.0)
    assert code == 0
    # The whole column is text: every row is refused, in the server's words.
    invalid = pq.read_table(tmp_path / "out" / "run-1" / "_invalid").to_pandas()
    assert len(invalid) == 100 and set(invalid.reason) == {"tenure_months: expected a number, got str"}
    assert report["rowsRefused"] == 100 and report["rowsScored"] == 0
    assert report["invalidOutput"] == f"file://{tmp_path}/out/run-1/_invalid"


def test_per_record_problems_match_the_servers():
    table = pa.table({"monthly_charges": pa.array([1.0, float("inf"), None, 3.5e38, float("nan")]),
                      "tenure_months": pa.array([1, 2, 3, None, 5]),
                      "plan": pa.array([1.5, None, 2.0, 3.0, 4.0])})
    records = table.to_pylist()
    expected = ["; ".join(p) or None for p in (SCHEMA.problems(r) for r in records)]
    assert columns.problems(SCHEMA, table.to_batches()[0]) == expected
    assert expected[0] == "plan: expected a category (string), got float"
    assert expected[1] == "monthly_charges: must be finite"


@pytest.mark.parametrize("plan", [pa.array(["basic", None, "gold"]), pa.array([True, False, None]),
                                  pa.array([1, 2, None]), pa.array(["basic", "premium", None]).dictionary_encode()])
def test_encoding_matches_encode_records(plan):
    table = pa.table({"monthly_charges": [1.5, None, 3.0], "tenure_months": pa.array([1, None, 3], pa.int32()),
                      "plan": plan})
    expected = SCHEMA.encode_records(table.to_pylist())
    np.testing.assert_array_equal(columns.encode(SCHEMA, table.to_batches()[0]), expected)


def test_too_many_refused_rows_fail_the_run_in_words_and_publish_nothing(tmp_path):
    frame = rows(1000)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    plan = table.column("plan").to_pylist()
    # A null is a missing value (scored as such), not a refusal: only the infinite charges are refused.
    table = table.set_column(3, "plan", pa.array([None if i % 10 == 0 else p for i, p in enumerate(plan)]))
    table = table.set_column(1, "monthly_charges", pa.array(
        [float("inf") if i % 10 == 0 else v for i, v in enumerate(frame.monthly_charges)]))
    code, report = run(tmp_path, table, maxInvalidFraction=0.05)
    assert code == 1 and report["phase"] == "Failed"
    assert report["error"].startswith("100 of 1,000 rows (10.00%) cannot be scored, more than maxInvalidFraction "
                                      "5.00%; nothing was published")
    assert "monthly_charges: must be finite (100 rows)" in report["error"]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_missing_feature_column_or_input_fails_in_words(tmp_path):
    code, report = run(tmp_path, rows(10).drop(columns="plan"))
    assert code == 1 and "lacks the feature column(s) plan that model churn:v1 needs" in report["error"]
    conf = batch_config(tmp_path, f"file://{tmp_path}/nothing.parquet")
    reporter = Reporter("BatchPrediction", "nightly", "ns", "report", report_dir=tmp_path / "r2", cluster=False)
    assert BatchRun(conf, reporter, loader=lambda uri: loaded()).execute() == 1
    assert json.loads(reporter.path.read_text())["error"] == f"input file://{tmp_path}/nothing.parquet does not exist"
    code, report = run(tmp_path, rows(10).rename(columns={"customer_id": "prediction"}))
    assert code == 1 and "input column(s) prediction would clash" in report["error"]


def test_a_run_never_overwrites_an_earlier_output(tmp_path):
    assert run(tmp_path, rows(10))[0] == 0
    before = sorted(p.name for p in (tmp_path / "out" / "run-1").iterdir())
    code, report = run(tmp_path, rows(20), run_id="run-1")
    assert code == 1 and "already exists" in report["error"]
    assert sorted(p.name for p in (tmp_path / "out" / "run-1").iterdir()) == before
    assert pq.read_table(tmp_path / "out" / "run-1").num_rows == 10


def test_declared_passthrough_and_parts(tmp_path):
    code, report = run(tmp_path, rows(2500), batchSize=300, parts=1000,
                       passthrough=["customer_id", "plan"])
    assert code == 0, report
    out = tmp_path / "out" / "run-1"
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [f"part-0000{i}.parquet" for i in range(3)]
    assert pq.read_table(out).column_names == ["customer_id", "plan", "prediction", "model_version", "run_id"]


def test_the_fingerprint_is_the_hash_of_the_files_written(tmp_path):
    code, report = run(tmp_path, rows(100))
    assert code == 0
    part = tmp_path / "out" / "run-1" / "part-00000.parquet"
    inner = hashlib.sha256(f"part-00000.parquet:{hashlib.sha256(part.read_bytes()).hexdigest()}\n".encode())
    assert report["fingerprint"] == "sha256:" + inner.hexdigest()


WRITE_INPUT = """
import sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
n, path = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
schema = pa.schema([("customer_id", pa.int64()), ("monthly_charges", pa.float64()), ("tenure_months", pa.int64()),
                    ("plan", pa.string())])
with pq.ParquetWriter(path, schema) as w:
    for start in range(0, n, 50_000):
        k = min(50_000, n - start)
        w.write_table(pa.table({"customer_id": np.arange(start, start + k), "monthly_charges": rng.uniform(20, 120, k),
                                "tenure_months": rng.integers(0, 72, k),
                                "plan": rng.choice(["basic", "premium", "standard"], k)}), row_group_size=10_000)
"""

# Peak resident memory above what the process held before the run, sampled every 5 ms while it runs.
SCORE_INPUT = """
import json, os, sys, threading, time
from mlcycle_runtime import config as cfg
from mlcycle_runtime.batch.run import BatchRun
from mlcycle_runtime.report import Reporter
from tests.unit.runtime.test_serve import loaded
path, out = sys.argv[1], sys.argv[2]
model = loaded()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
base = rss(); peak = [base]; done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss()); time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
conf = cfg.BatchConfig.model_validate({"name": "m", "model": {"uri": "file:///m"}, "input": {"uri": path},
                                       "output": {"uri": out}, "batchSize": 1000})
rep = Reporter("BatchPrediction", "m", "ns", "report", report_dir=out + "-report", cluster=False)
code = BatchRun(conf, rep, loader=lambda uri: model).execute()
done.set()
print(json.dumps({"code": code, "growth": peak[0] - base, "rows": json.loads(rep.path.read_text()).get("rowsScored")}))
"""


def test_memory_is_bounded_by_the_batch_size_not_the_input(tmp_path):
    """Peak memory growth while scoring 50,000 and 500,000 rows in batches of 1,000: within a few MiB of each other
    while the input grows tenfold (by ~10 MiB of data: a scorer that held it, or pre-buffered it, grows with it)."""
    growth = {}
    for n in (50_000, 500_000):
        path = tmp_path / f"in-{n}.parquet"
        subprocess.run([sys.executable, "-c", WRITE_INPUT, str(n), str(path)], cwd=ROOT, check=True)
        out = subprocess.run([sys.executable, "-c", SCORE_INPUT, str(path), str(tmp_path / f"out-{n}")],
                             capture_output=True, text=True, cwd=ROOT, check=True)
        probe = json.loads(out.stdout.strip().splitlines()[-1])
        assert probe["code"] == 0 and probe["rows"] == n
        growth[n] = probe["growth"]
    assert growth[500_000] < growth[50_000] + 4 * 2**20, {n: f"{g / 2**20:.1f} MiB" for n, g in growth.items()}


def test_a_config_that_does_not_validate_is_reported_where_it_names(tmp_path, monkeypatch):
    """The pod exits non-zero with a one-line reason, and the BatchPrediction it names says why."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"name": "nightly", "namespace": "ns", "model": {"uri": "file:///m"},
                                "output": {"uri": "file:///out"}}))
    monkeypatch.setenv("MLCYCLE_REPORT_DIR", str(tmp_path / "reports"))
    done = subprocess.run([sys.executable, "-m", "mlcycle_runtime.batch", "--config", str(path)], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ})
    assert done.returncode != 0 and done.stderr.strip().endswith("mlcycle: invalid config: input: Field required")
    report = json.loads((tmp_path / "reports" / "batchprediction-nightly.json").read_text())
    assert report == {"phase": "Failed", "error": "mlcycle: invalid config: input: Field required"}

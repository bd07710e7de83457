"""Batch runs on s3://, against moto's S3 server on loopback: the input read from a bucket, a run's parts written in
place with `_COMPLETE` last, a failed run's parts removed, and a missing bucket said in words."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlcycle_runtime import config as cfg
from mlcycle_runtime import storage
from mlcycle_runtime.batch.run import BatchRun
from mlcycle_runtime.report import Reporter
from tests.integration.runtime.test_storage_s3 import BUCKET, moto, s3_env  # noqa: F401  (fixtures)
from tests.unit.runtime.test_batch import rows
from tests.unit.runtime.test_serve import loaded

# Every test talks to the moto server through the AWS variables s3_env sets.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("s3_env")]


def put_input(table: pa.Table, key: str) -> str:
    uri = f"s3://{BUCKET}/{key}"
    fs, path = storage.filesystem(uri)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f, row_group_size=300)
    return uri


def run(tmp_path, input_uri: str, output_uri: str, run_id: str, **spec) -> tuple[int, dict]:
    conf = cfg.BatchConfig.model_validate({"name": "s3", "model": {"uri": "file:///m"}, "input": {"uri": input_uri},
                                           "output": {"uri": output_uri}, "batchSize": 250, **spec})
    reporter = Reporter("BatchPrediction", "s3", "ns", "report", report_dir=tmp_path, cluster=False)
    model = loaded()
    code = BatchRun(conf, reporter, loader=lambda uri: model, run_id=run_id).execute()
    return code, json.loads(reporter.path.read_text())


def listing(prefix: str) -> list[str]:
    fs, path = storage.filesystem(prefix)
    fs.invalidate_cache()
    return sorted(p.removeprefix(path).lstrip("/") for p in fs.find(path))


def test_a_run_reads_and_writes_s3(tmp_path):
    frame = rows(1000)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    input_uri = put_input(table, "data/customers.parquet")
    code, report = run(tmp_path, input_uri, f"s3://{BUCKET}/predictions", "r1")
    assert code == 0, report
    assert report["output"] == f"s3://{BUCKET}/predictions/r1" and report["rowsScored"] == 1000
    assert listing(report["output"]) == [storage.COMPLETE, "part-00000.parquet"]
    fs, path = storage.filesystem(report["output"])
    with fs.open(f"{path}/part-00000.parquet", "rb") as f:
        written = pq.read_table(f).to_pandas()
    assert written.customer_id.tolist() == frame.customer_id.tolist()
    again, report = run(tmp_path, input_uri, f"s3://{BUCKET}/predictions", "r1")
    assert again == 1 and "already exists" in report["error"]


def test_a_failed_run_leaves_nothing_and_a_missing_bucket_is_named(tmp_path):
    table = pa.Table.from_pandas(rows(600), preserve_index=False)
    bad = table.set_column(1, "monthly_charges", pa.array([float("inf")] * 600))
    input_uri = put_input(bad, "data/bad.parquet")
    code, report = run(tmp_path, input_uri, f"s3://{BUCKET}/refused", "r2")
    assert code == 1 and "600 of 600 rows (100.00%) cannot be scored" in report["error"]
    assert listing(f"s3://{BUCKET}/refused") == []
    code, report = run(tmp_path, input_uri, "s3://no-such-bucket/predictions", "r3")
    assert code == 1 and "bucket 'no-such-bucket' does not exist" in report["error"], report

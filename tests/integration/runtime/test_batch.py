"""The batch scorer as its pod runs it: `python -m mlcycle_runtime.batch --config ...` in its own process, on a model
version published as the trainer publishes it (a BentoML export in storage) and real churn Parquet; its rows equal
what a running `bentoml serve` of the same version answers over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from examples.churn.generate import generate
from mlcycle_runtime import storage
from tests.integration.runtime.test_serve import FEATURES, make_version, start, stop

pytestmark = pytest.mark.integration


def score(tmp: Path, env: dict[str, str], model_uri: str, input_uri: str, name: str, **spec) -> tuple[int, dict, str]:
    conf = tmp / f"{name}.json"
    conf.write_text(json.dumps({"kind": "BatchPrediction", "name": name, "namespace": "t",
                                "model": {"name": "churn-classifier", "uri": model_uri},
                                "input": {"uri": input_uri}, "output": {"uri": f"file://{tmp}/predictions"},
                                **spec}))
    done = subprocess.run([sys.executable, "-m", "mlcycle_runtime.batch", "--config", str(conf)],
                          env={**env, "MLCYCLE_REPORT_DIR": str(tmp / "reports")}, capture_output=True, text=True,
                          timeout=300)
    report = json.loads((tmp / "reports" / f"batchprediction-{name}.json").read_text())
    return done.returncode, report, done.stdout + done.stderr


def test_a_run_scores_every_row_as_the_model_server_does(serve_home):
    import bentoml

    tmp, env = serve_home
    uri = make_version(tmp, "xgboost", "batch-v1")
    frame = generate(rows=3000, seed=21)
    data = tmp / "customers"
    data.mkdir()
    # A directory of two files, as a day's partitions would be.
    pq.write_table(pa.Table.from_pandas(frame.iloc[:1800], preserve_index=False), data / "a.parquet",
                   row_group_size=500)
    pq.write_table(pa.Table.from_pandas(frame.iloc[1800:], preserve_index=False), data / "b.parquet")
    code, report, log = score(tmp, env, uri, f"file://{data}", "nightly", batchSize=700,
                              input={"uri": f"file://{data}", "passthrough": ["customer_id", "event_timestamp"]})
    assert code == 0, log
    assert report["phase"] == "Succeeded" and report["rowsScored"] == 3000 and report["rowsRefused"] == 0
    assert report["modelVersion"] == "batch-v1" and report["output"].startswith(f"file://{tmp}/predictions/")
    assert storage.exists(report["output"])
    written = pd.read_parquet(report["output"].removeprefix("file://"))
    assert list(written.columns) == ["customer_id", "event_timestamp", "prediction", "model_version", "run_id"]
    assert len(written) == 3000 and set(written.run_id) == {report["runId"]}
    # In the input's order (files by name, rows as stored): customers recur over time, so the keys are the pair.
    assert written.customer_id.tolist() == frame.customer_id.tolist()
    assert written.event_timestamp.tolist() == frame.event_timestamp.tolist()

    server = start(tmp, uri, env, {"enabled": False})
    try:
        sample = frame.iloc[::97]
        records = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
                   for r in sample[FEATURES].astype(object).to_dict(orient="records")]
        with bentoml.SyncHTTPClient(server.url) as client:
            online = client.predict(records=records)["predictions"]
    finally:
        stop(server.process)
    assert written.prediction.iloc[::97].tolist() == online


def test_bad_input_fails_in_words_and_publishes_nothing(serve_home):
    tmp, env = serve_home
    uri = make_version(tmp, "xgboost", "batch-v2")
    frame = generate(rows=500, seed=3)
    bad = tmp / "bad.parquet"
    # A numeric feature read from a CSV as text: every row refused, in the server's words.
    pq.write_table(pa.Table.from_pandas(frame.astype({"tenure_months": str}), preserve_index=False), bad)
    code, report, log = score(tmp, env, uri, f"file://{bad}", "bad")
    assert code == 1 and report["phase"] == "Failed", log
    assert report["error"].startswith("500 of 500 rows (100.00%) cannot be scored, more than maxInvalidFraction 0.00%")
    assert "tenure_months: expected a number, got str (500 rows)" in report["error"]
    assert not (tmp / "predictions").exists() or not any(
        p.name.startswith(report["runId"]) or p.name.startswith(f".{report['runId']}")
        for p in (tmp / "predictions").iterdir())
    code, report, log = score(tmp, env, uri, f"file://{tmp}/missing.parquet", "missing")
    assert code == 1 and report["error"] == f"input file://{tmp}/missing.parquet does not exist"
    assert "mlcycle: batch prediction failed: input" in log

"""A BatchPrediction run for real: the operator's Job runs `python -m mlcycle_runtime.batch` on the process node
(uid 65532, read-only root, the project's claim at /mnt/pvc/churn-models), on a model version published as the
trainer publishes it; the rows it writes are the model's predictions for every input row, its report reaches
status through the API, and an input the model cannot score fails the run in words with nothing published."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest

from examples.churn.generate import CATEGORICAL, NUMERIC, generate
from mlcycle_runtime import reference, storage
from mlcycle_runtime.model import ModelCard, Predictor, load_version, save_version
from mlcycle_runtime.schema import FeatureSchema
from tests.integration.helpers import EXAMPLES, Mlcycle, condition, wait_for

pytestmark = pytest.mark.e2e

FEATURES = [*NUMERIC, *CATEGORICAL]
VERSION = "batch-e2e-v1"


def claim_directory(namespace: str) -> Path:
    return Path("/tmp") / f"models-{namespace}"[:63]  # the hostPath the ml fixture binds to the claim


def publish_model(claim: Path) -> str:
    """A small XGBoost churn model, exported where the project's storage puts versions."""
    import xgboost as xgb

    frame = generate(rows=1500, seed=11)
    schema = FeatureSchema.infer(frame, FEATURES)
    matrix, label = schema.encode_frame(frame), frame["churned"].to_numpy()
    learner = xgb.train({"max_depth": 3, "objective": "binary:logistic"}, xgb.DMatrix(matrix, label=label), 15)
    card = ModelCard("churn-classifier", VERSION, "xgboost", "binary", schema, "churned")
    ref = reference.build(frame, schema, Predictor(learner, "xgboost", "binary").predict(matrix))
    return save_version(learner, card, ref, f"file://{claim}/artifacts/churn/models/churn-classifier/{VERSION}")


def batch_prediction(name: str, input_path: str) -> dict:
    manifest = copy.deepcopy(EXAMPLES["BatchPrediction"])
    manifest["metadata"]["name"] = name
    manifest["spec"].pop("schedule")
    manifest["spec"]["model"] = {"name": "churn-classifier", "version": VERSION}
    manifest["spec"]["input"] = {"uri": f"pvc://churn-models/{input_path}",
                                 "passthrough": ["customer_id", "event_timestamp"]}
    manifest["spec"].update(batchSize=500, maxInvalidFraction=0.0)
    return manifest


@pytest.mark.timeout(600)
def test_a_run_writes_the_models_predictions_for_every_row(ml: Mlcycle, node, tmp_path, monkeypatch):
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    claim = claim_directory(ml.namespace)
    model_uri = publish_model(claim)
    frame = generate(rows=4000, seed=21)
    (claim / "data").mkdir(exist_ok=True)
    frame.to_parquet(claim / "data" / "customers.parquet", index=False, row_group_size=1000)
    bad = frame.astype({"tenure_months": str})  # a numeric feature as text: every row refused
    bad.to_parquet(claim / "data" / "bad.parquet", index=False)

    ml.create(EXAMPLES["MLProject"])
    ml.create(batch_prediction("churn-once", "data/customers.parquet"))
    status = wait_for(lambda: (s := ml.status("BatchPrediction", "churn-once")).get("phase") in ("Succeeded", "Failed")
                      and s, timeout=300, every=1, what="the run to end")
    pods = ml.core.list_namespaced_pod(ml.namespace, label_selector="job-name=churn-once-batch").items
    logs = "\n".join(node.logs(ml.namespace, p.metadata.name) for p in pods)
    assert status["phase"] == "Succeeded", f"{status}\n{logs}"
    assert {p.spec.node_name for p in pods} == {node.name}
    assert (status["rowsScored"], status["rowsRefused"], status["modelVersion"]) == (4000, 0, VERSION)
    assert status["output"] == f"pvc://churn-models/predictions/churn/{status['runId']}"
    assert status["fingerprint"].startswith("sha256:") and status["rowsPerSecond"] > 0
    written_dir = claim / "predictions" / "churn" / status["runId"]
    assert (written_dir / storage.COMPLETE).exists()
    written = pd.read_parquet(written_dir)
    assert written.customer_id.tolist() == frame.customer_id.tolist()
    assert set(written.model_version) == {VERSION} and set(written.run_id) == {status["runId"]}
    model = load_version(model_uri)
    expected = model.predictor.predict(model.card.features.encode_frame(frame))
    assert written.prediction.tolist() == expected.tolist()
    assert "scored 4,000 rows, refused 0" in logs
    ml.wait_event("churn-once", lambda e: e.startswith("Succeeded: scored 4,000 rows"), "a Succeeded Event")

    ml.create(batch_prediction("churn-bad", "data/bad.parquet"))
    status = wait_for(lambda: (s := ml.status("BatchPrediction", "churn-bad")).get("phase") in ("Succeeded", "Failed")
                      and s, timeout=300, every=1, what="the bad run to end")
    assert status["phase"] == "Failed"
    degraded = condition(status, "Degraded")
    assert degraded["reason"] == "ScoringFailed"
    assert "4,000 of 4,000 rows (100.00%) cannot be scored" in degraded["message"]
    assert "tenure_months: expected a number, got str (4000 rows)" in degraded["message"]
    assert "output" not in status
    assert sorted(p.name for p in (claim / "predictions" / "churn").iterdir()) == [
        ml.status("BatchPrediction", "churn-once")["runId"]], "the failed run left a directory"

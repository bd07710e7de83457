"""The trainer as it runs in a pod: `python -m mlcycle_runtime.train --config FILE` as a subprocess, with a local
Ray (2 CPUs), on generated churn data; its report is the JSON file the Reporter writes when not in a cluster.

Each run starts its own Ray (tens of seconds on a loaded machine), so a run checks several things at once: the
first is tuned by Optuna, the sklearn one reads its data through the example's Feast feature service, and the
failures that need no Ray are refused before one starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlcycle_runtime import storage
from mlcycle_runtime.model import load_version
from tests.harness.pytest_support import unavailable

ROOT = Path(__file__).resolve().parents[3]
DEFINITIONS = ROOT / "examples" / "churn" / "feature_repo"
ROWS = 3000
# The churn_features service's features, as view:feature in the order the service lists them.
SERVICE_REFS = ["customer_profile:tenure_months", "customer_profile:contract", "customer_profile:plan",
                "customer_profile:region", "customer_usage:monthly_charges", "customer_usage:support_calls",
                "customer_usage:data_usage_gb"]
RUN_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def churn(tmp_path_factory) -> Path:
    try:
        from examples.churn.generate import write
    except ImportError as err:
        unavailable("churn data generator", str(err))
    out = tmp_path_factory.mktemp("churn")
    return Path(write(out, rows=ROWS)["customers"])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def feast_repo(churn, tmp_path_factory) -> Path:
    """The example's Feast definitions applied over the generated data, in a repo like the operator's /etc/feast
    (feature_store.yaml alone; registry and online store beside it)."""
    import yaml

    from mlcycle_runtime.features import apply

    base = tmp_path_factory.mktemp("feast")
    repo = base / "repo"
    repo.mkdir()
    (repo / "feature_store.yaml").write_text(yaml.safe_dump({
        "project": "churn", "registry": str(base / "registry.db"), "provider": "local",
        "offline_store": {"type": "file"}, "online_store": {"type": "sqlite", "path": str(base / "online.db")},
        "entity_key_serialization_version": 3}))
    apply(repo, definitions=DEFINITIONS, data=churn.parent)
    return repo


def base_config(source: Path | str, store: Path, name: str) -> dict[str, Any]:
    return {
        "kind": "TrainingJob", "name": name, "namespace": "ml", "project": "churn", "metric": "roc_auc",
        "mode": "max", "storage": {"uri": f"file://{store}", "modelPath": "churn/models/churn-classifier"},
        "report": {"statusField": "result"},
        "spec": {
            "project": "churn",
            "data": {"source": {"uri": str(source), "timestampColumn": "event_timestamp",
                                "entityColumns": ["customer_id"]},
                     "labelColumn": "churned", "split": {"validationFraction": 0.2, "testFraction": 0.1}},
            "validation": {"minRows": 1000, "columns": [
                {"name": "tenure_months", "type": "int", "min": 0, "max": 600},
                {"name": "monthly_charges", "type": "float", "min": 0, "maxMissingFraction": 0.01},
                {"name": "plan", "type": "string", "allowedValues": ["basic", "standard", "premium"]}]},
            "model": {"framework": "xgboost", "params": {"tree_method": "hist", "num_boost_round": 20}},
            "tuning": {"numSamples": 4, "algorithm": "random", "maxConcurrentTrials": 2, "metric": "roc_auc",
                       "mode": "max", "scheduler": {"type": "asha", "gracePeriod": 4, "reductionFactor": 2},
                       "searchSpace": {"max_depth": {"type": "randint", "lower": 2, "upper": 6},
                                       "eta": {"type": "loguniform", "lower": 0.05, "upper": 0.4},
                                       "subsample": {"type": "choice", "values": ["0.7", "1.0"]}}},
            "distribution": {"workers": 1, "cpuPerWorker": 1},
            "evaluation": {"gates": {"minMetric": 0.6, "minLiftOverChampion": -1.0}, "slices": ["plan"],
                           "calibration": True},
            "output": {"modelName": "churn-classifier"},
        },
    }


def train(workdir: Path, config: dict[str, Any]) -> tuple[subprocess.CompletedProcess, dict[str, Any]]:
    """Run the trainer on `config`; the process result and the last report it wrote."""
    path = workdir / f"{config['name']}.json"
    path.write_text(json.dumps(config))
    reports = workdir / "reports"
    env = {**os.environ, "MLCYCLE_REPORT_DIR": str(reports), "MLCYCLE_IMAGE": "ghcr.io/mlcycle/runtime:test",
           "BENTOML_HOME": str(workdir / "bentoml"), "PYTHONPATH": str(ROOT / "runtime")}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "mlcycle_runtime.train", "--config", str(path)], env=env,
                          cwd=workdir, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    report_file = reports / f"trainingjob-{config['name']}.json"
    assert report_file.exists(), f"no report; stderr:\n{proc.stderr[-3000:]}"
    return proc, json.loads(report_file.read_text())


def assert_succeeded(proc: subprocess.CompletedProcess, report: dict[str, Any]) -> None:
    assert proc.returncode == 0 and report["phase"] == "Succeeded", (report.get("error"), proc.stderr[-3000:])


@pytest.fixture(scope="module")
def xgboost_run(churn, workdir):
    # Optuna's model-based search through Ray Tune, two trials at a time, with ASHA stopping on boosting rounds.
    store = workdir / "store"
    config = base_config(churn, store, "xgb")
    config["spec"]["tuning"]["algorithm"] = "optuna"
    proc, report = train(workdir, config)
    assert_succeeded(proc, report)
    return proc, report, store


def test_a_tuned_xgboost_run_reports_everything_the_operator_reads(xgboost_run):
    proc, report, store = xgboost_run
    assert report["validation"] == {"passed": True, "violations": []}
    trials = report["trials"]
    assert (trials["total"], trials["finished"]) == (4, 4)
    assert set(trials["best"]["config"]) == {"max_depth", "eta", "subsample"}
    assert trials["best"]["metrics"]["roc_auc"] > 0.6
    assert "tuning: 4 trial(s), optuna search, at most 2 at a time" in proc.stdout
    assert "trial 4/4 done, best roc_auc=" in proc.stdout
    assert 2 <= trials["best"]["config"]["max_depth"] < 6 and 0.05 <= trials["best"]["config"]["eta"] <= 0.4
    model = report["model"]
    assert model["name"] == "churn-classifier"
    assert model["uri"] == f"file://{store}/churn/models/churn-classifier/{model['version']}"
    assert set(report["metrics"]) == {"roc_auc", "pr_auc", "log_loss", "accuracy", "f1", "brier", "ece"}
    assert report["metrics"]["roc_auc"] > report["baselines"]["zeroRule"]["roc_auc"] == 0.5
    assert set(report["baselines"]) == {"zeroRule", "random"}  # no champion yet
    assert [g["name"] for g in report["gates"]] == ["minMetric", "minLiftOverBaseline"]
    assert all(g["passed"] for g in report["gates"])
    assert {s["value"] for s in report["slices"]} == {"basic", "standard", "premium"}
    assert sum(s["rows"] for s in report["slices"]) == report["lineage"]["rows"]["test"] == ROWS // 10
    lineage = report["lineage"]
    assert lineage["dataFingerprint"].startswith("sha256:")
    assert lineage["featureRefs"] == ["tenure_months", "monthly_charges", "support_calls", "data_usage_gb",
                                      "contract", "plan", "region"]
    assert lineage["image"] == "ghcr.io/mlcycle/runtime:test"
    assert lineage["params"]["tree_method"] == "hist" and 1 <= lineage["params"]["num_boost_round"] <= 20
    assert lineage["startTime"] <= lineage["endTime"]
    assert "error" not in report


def test_the_version_is_published_and_serves(xgboost_run, churn, tmp_path):
    _, report, _ = xgboost_run
    uri = report["model"]["uri"]
    local = Path(storage.resolve(uri).removeprefix("file://"))
    names = {p.name for p in local.iterdir()}
    assert names == {"model.json", "reference.json", "model.bentomodel", "_COMPLETE"}
    os.environ.setdefault("BENTOML_HOME", str(tmp_path / "bentoml"))
    loaded = load_version(uri, tmp_path / "fetched")
    card = loaded.card
    assert (card.name, card.version, card.framework, card.task) == ("churn-classifier", report["model"]["version"],
                                                                    "xgboost", "binary")
    assert card.features.names == ["tenure_months", "monthly_charges", "support_calls", "data_usage_gb",
                                   "contract", "plan", "region"]
    assert card.metrics == report["metrics"] and card.gates == report["gates"] and card.gates_passed is True
    assert card.lineage["dataFingerprint"] == report["lineage"]["dataFingerprint"]
    assert card.classes == [0, 1]
    rows = pd.read_parquet(churn).tail(200)
    scores = loaded.predictor.predict(card.features.encode_frame(rows))
    assert scores.shape == (200,) and ((scores >= 0) & (scores <= 1)).all()
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(rows["churned"], scores) > 0.6
    # The server's path (records, not frames) gives the same scores.
    records = json.loads(rows[card.features.names].to_json(orient="records"))
    assert np.allclose(loaded.predictor.predict(card.features.encode_records(records)), scores, atol=1e-6)
    assert loaded.reference is not None and loaded.reference.rows == report["lineage"]["rows"]["train"]
    assert loaded.reference.prediction is not None and set(loaded.reference.features) == set(card.features.names)


def test_an_sklearn_run_on_feast_features_beside_a_champion_writes_a_new_version(xgboost_run, churn, feast_repo,
                                                                                    workdir):
    # The entity rows (keys, time, label) come from churn_labels.parquet; every feature comes from the example's
    # feature service through Feast's point-in-time join.
    _, first, store = xgboost_run
    first_dir = Path(storage.resolve(first["model"]["uri"]).removeprefix("file://"))
    before = {p.name: p.read_bytes() for p in first_dir.iterdir()}
    config = base_config(churn.parent / "churn_labels.parquet", store, "skl")
    config["featureStore"] = {"repoPath": str(feast_repo)}
    config["spec"]["data"]["featureService"] = "churn_features"
    config["spec"]["model"] = {"framework": "sklearn", "params": {"max_iter": 30}}
    config["spec"]["tuning"] = {"numSamples": 2, "maxConcurrentTrials": 1, "searchSpace": {
        "learning_rate": {"type": "choice", "values": ["0.05", "0.2"]}}}
    config["champion"] = {"model": "churn-classifier", "version": first["model"]["version"],
                          "uri": first["model"]["uri"]}
    proc, report = train(workdir, config)
    assert_succeeded(proc, report)
    assert report["trials"]["total"] == 2 and report["trials"]["finished"] == 2
    assert report["lineage"]["featureRefs"] == SERVICE_REFS
    assert report["validation"] == {"passed": True, "violations": []}
    # Feast's point-in-time join of the labels gives back exactly the table the first run read whole.
    assert report["lineage"]["dataFingerprint"] == first["lineage"]["dataFingerprint"]
    assert report["lineage"]["rows"] == first["lineage"]["rows"]
    assert report["model"]["version"] != first["model"]["version"]
    assert report["lineage"]["params"] == {"max_iter": 30,
                                           "learning_rate": report["trials"]["best"]["config"]["learning_rate"]}
    # The champion is scored on the same test rows: its metrics match what its own job measured (so the
    # features Feast joined are the values the champion was trained and tested on).
    assert report["baselines"]["champion"]["roc_auc"] == pytest.approx(first["metrics"]["roc_auc"], abs=1e-6)
    champion_gate = next(g for g in report["gates"] if g["name"] == "minLiftOverChampion")
    assert champion_gate["value"] == pytest.approx(report["metrics"]["roc_auc"] - first["metrics"]["roc_auc"],
                                                   abs=1e-5)
    assert {p.name: p.read_bytes() for p in first_dir.iterdir()} == before
    assert storage.exists(report["model"]["uri"])
    card = load_version(report["model"]["uri"], workdir / "skl-fetched").card
    assert card.framework == "sklearn" and sorted(card.features.names) == sorted(r.split(":")[1] for r in SERVICE_REFS)
    assert card.lineage["featureRefs"] == SERVICE_REFS


def test_asha_stops_bad_trials_early_and_an_unloadable_champion_is_skipped(xgboost_run, churn, workdir):
    # A grid whose later points learn almost nothing: ASHA's first rung (4 rounds) stops them, measured on
    # log loss (minimised), which a near-zero learning rate leaves near log(2) while eta 0.3 brings it down.
    _, _, store = xgboost_run
    config = base_config(churn, store, "asha")
    config.update(metric="log_loss", mode="min")
    config["spec"]["tuning"] = {"algorithm": "grid", "maxConcurrentTrials": 1, "metric": "log_loss", "mode": "min",
                                "scheduler": {"type": "asha", "gracePeriod": 4, "reductionFactor": 2},
                                "searchSpace": {"eta": {"type": "grid", "values": ["0.3", "0.001", "0.002"]}}}
    config["spec"]["evaluation"]["gates"] = {"minMetric": 0.6}
    config["champion"] = {"uri": f"file://{store}/churn/models/churn-classifier/nope"}
    proc, report = train(workdir, config)
    assert_succeeded(proc, report)
    assert report["trials"]["total"] == 3 and report["trials"]["finished"] == 3
    assert report["trials"]["stoppedEarly"] == 2
    assert report["trials"]["best"]["config"] == {"eta": 0.3}
    assert report["gates"][0] == {"name": "minMetric", "threshold": 0.6, "value": report["metrics"]["log_loss"],
                                  "passed": True}
    assert "champion" not in report["baselines"]
    assert any("nope" in n and "does not exist" in n for n in report["notes"])


def test_distributed_training_honours_the_worker_count(churn, workdir):
    if (os.cpu_count() or 1) < 2:
        unavailable("two CPUs", "a run with workers=2 needs two CPUs for its Ray Train workers")
    config = base_config(churn, workdir / "store-dist", "dist")
    config["spec"]["distribution"] = {"workers": 2, "cpuPerWorker": 1}
    config["spec"]["tuning"].update(numSamples=2, maxConcurrentTrials=1)
    # Every round is a collective report across the Ray Train workers, the slow part of a data-parallel trial.
    config["spec"]["model"]["params"]["num_boost_round"] = 5
    proc, report = train(workdir, config)
    assert_succeeded(proc, report)
    assert report["trials"]["finished"] == 2 and report["metrics"]["roc_auc"] > 0.6
    assert storage.exists(report["model"]["uri"])
    assert not any("ASHA" in note for note in report.get("notes", []))


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_asha_stops_data_parallel_trials_and_frees_their_workers(churn, workdir):
    # The near-zero learning rates lose at ASHA's first rung (round 2) and are stopped mid-run. Each stopped trial
    # must hand its two CPUs back: the next trial's Ray Train run needs both, so a leak would stall the search.
    if (os.cpu_count() or 1) < 2:
        unavailable("two CPUs", "a run with workers=2 needs two CPUs for its Ray Train workers")
    config = base_config(churn, workdir / "store-dist-asha", "dist-asha")
    config.update(metric="log_loss", mode="min")
    config["spec"]["distribution"] = {"workers": 2, "cpuPerWorker": 1}
    config["spec"]["model"]["params"]["num_boost_round"] = 8
    config["spec"]["tuning"] = {"algorithm": "grid", "maxConcurrentTrials": 1, "metric": "log_loss", "mode": "min",
                                "scheduler": {"type": "asha", "gracePeriod": 2, "reductionFactor": 2},
                                "searchSpace": {"eta": {"type": "grid", "values": ["0.3", "0.001", "0.002"]}}}
    config["spec"]["evaluation"]["gates"] = {"minMetric": 0.6}
    proc, report = train(workdir, config)
    assert_succeeded(proc, report)
    assert report["trials"]["total"] == 3 and report["trials"]["finished"] == 3
    assert report["trials"]["stoppedEarly"] == 2
    assert report["trials"]["best"]["config"] == {"eta": 0.3}
    assert report["lineage"]["params"]["num_boost_round"] == 8
    os.environ.setdefault("BENTOML_HOME", str(workdir / "bentoml"))
    loaded = load_version(report["model"]["uri"], workdir / "dist-asha-fetched")
    rows = pd.read_parquet(churn).tail(200)
    scores = loaded.predictor.predict(loaded.card.features.encode_frame(rows))
    assert scores.shape == (200,) and ((scores > 0) & (scores < 1)).all()
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(rows["churned"], scores) > 0.6
    assert report["metrics"]["log_loss"] < report["baselines"]["zeroRule"]["log_loss"]


# --- bad data: a Failed report naming each problem, exit non-zero, nothing written ------------------------------


def test_a_corrupt_parquet_fails_naming_the_file(workdir):
    bad = workdir / "corrupt.parquet"
    bad.write_bytes(b"PAR1\x00\x01 definitely not parquet")
    store = workdir / "store-bad"
    proc, report = train(workdir, base_config(bad, store, "corrupt"))
    assert proc.returncode == 1
    assert report["phase"] == "Failed"
    assert report["error"].startswith(f"data source {bad} is not readable Parquet")
    assert "\n" not in report["error"] and "Traceback" not in proc.stderr
    assert not store.exists()


def test_bad_values_and_a_missing_column_are_all_listed(churn, workdir):
    frame = pd.read_parquet(churn)
    frame.loc[:11, "tenure_months"] = [720, 999] * 6
    frame.loc[20:24, "plan"] = "gold"
    frame = frame.drop(columns=["region"])
    source = workdir / "bad.parquet"
    frame.to_parquet(source)
    config = base_config(source, workdir / "store-bad", "baddata")
    config["spec"]["validation"]["columns"].append({"name": "region", "type": "string"})
    proc, report = train(workdir, config)
    assert proc.returncode == 1 and report["phase"] == "Failed"
    assert report["validation"]["passed"] is False
    assert report["validation"]["violations"] == [
        "tenure_months: 12 values above max 600 (e.g. 720, 999)",
        "plan: 5 values not in allowedValues [basic, standard, premium] (e.g. 'gold')",
        "region: column missing",
    ]
    assert report["error"].startswith("bad data: 3 problems: tenure_months: 12 values above max 600")
    assert "model" not in report and not (workdir / "store-bad").exists()


def test_a_missing_source_fails_with_a_report(workdir):
    proc, report = train(workdir, base_config(workdir / "absent.parquet", workdir / "s", "absent"))
    assert proc.returncode == 1
    assert report == {"phase": "Failed", "error": f"data source {workdir / 'absent.parquet'} does not exist",
                      "lineage": report["lineage"]}


def test_an_impossible_distribution_fails_before_training(churn, workdir):
    config = base_config(churn, workdir / "s", "toobig")
    config["spec"]["distribution"] = {"workers": 64, "cpuPerWorker": 1}
    proc, report = train(workdir, config)
    assert proc.returncode == 1 and report["phase"] == "Failed"
    # Refused against the machine's CPUs, before a local Ray was started for nothing.
    cpus = len(os.sched_getaffinity(0))
    assert report["error"] == f"distribution asks 64 workers x 1.0 CPU but this machine has {cpus} CPUs"

"""The operator's rendered training config goes through the trainer's TrainConfig unchanged, so they cannot drift."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mlcycle_operator.api.mlproject import MLProjectSpec
from mlcycle_operator.api.trainingjob import TrainingJobSpec
from mlcycle_operator.resources import training
from mlcycle_operator.resources.common import Meta
from mlcycle_runtime import config as cfg
from mlcycle_runtime.train import search
from mlcycle_runtime.train.__main__ import main

MANIFESTS = Path(__file__).resolve().parents[3] / "examples" / "churn" / "manifests"


def rendered(champion: dict | None = None) -> dict:
    project = MLProjectSpec.model_validate(yaml.safe_load((MANIFESTS / "01-mlproject.yaml").read_text())["spec"])
    job = TrainingJobSpec.model_validate(yaml.safe_load((MANIFESTS / "02-trainingjob.yaml").read_text())["spec"])
    meta = Meta(name="churn-v1", namespace="ml", uid="u")
    # Through JSON, as the ConfigMap carries it.
    return json.loads(json.dumps(training.training_config(job, meta, project, champion)))


def test_the_operators_config_parses_with_every_field_the_trainer_reads():
    champion = {"model": "churn-classifier", "version": "7", "uri": "pvc://churn-models/x", "trainingJob": "old"}
    config = cfg.parse(cfg.TrainConfig, rendered(champion))
    raw = rendered(champion)
    spec = raw["spec"]
    assert (config.name, config.namespace, config.project) == ("churn-v1", "ml", "churn")
    assert (config.metric, config.mode) == (raw["metric"], raw["mode"])
    assert config.storage.uri == raw["storage"]["uri"] and config.storage.model_path == raw["storage"]["modelPath"]
    assert config.feature_store.repo_path == raw["featureStore"]["repoPath"]
    assert config.champion.uri == champion["uri"] and config.champion.training_job == "old"
    assert config.report.status_field == "result"
    s = config.spec
    assert s.data.source.uri == spec["data"]["source"]["uri"]
    assert s.data.source.entity_columns == spec["data"]["source"]["entityColumns"]
    assert s.data.feature_service == spec["data"]["featureService"]
    assert s.data.split.validation_fraction == spec["data"]["split"]["validationFraction"]
    assert [r.name for r in s.validation.columns] == [c["name"] for c in spec["validation"]["columns"]]
    assert s.validation.columns[0].max == spec["validation"]["columns"][0]["max"]
    assert s.validation.columns[2].allowed_values == spec["validation"]["columns"][2]["allowedValues"]
    assert s.model.params == spec["model"]["params"]
    assert s.tuning.num_samples == spec["tuning"]["numSamples"]
    assert s.tuning.max_concurrent_trials == spec["tuning"]["maxConcurrentTrials"]
    assert s.tuning.scheduler.grace_period == spec["tuning"]["scheduler"]["gracePeriod"]
    assert set(s.tuning.search_space) == set(spec["tuning"]["searchSpace"])
    assert s.distribution.workers == spec["distribution"]["workers"]
    assert s.evaluation.gates.min_metric == spec["evaluation"]["gates"]["minMetric"]
    assert s.evaluation.slices == spec["evaluation"]["slices"]
    assert s.output.model_name == spec["output"]["modelName"]
    # And the trainer can plan its search from it.
    assert search.plan(s.tuning, config.metric, config.mode).total == spec["tuning"]["numSamples"]


def test_choice_values_as_the_operator_writes_them_become_typed():
    raw = rendered()
    raw["spec"]["tuning"]["searchSpace"] = {"max_depth": {"type": "choice", "values": ["3", "5"]}}
    config = cfg.parse(cfg.TrainConfig, raw)
    assert search.plan(config.spec.tuning, "roc_auc", "max").space["max_depth"].categories == [3, 5]


def test_a_bad_config_exits_with_one_line_and_reports_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCYCLE_REPORT_DIR", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    raw = rendered()
    del raw["spec"]["output"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(path)])
    assert str(exit_.value.code) == "mlcycle: invalid config: spec.output: Field required"
    report = json.loads((tmp_path / "trainingjob-churn-v1.json").read_text())
    assert report == {"phase": "Failed", "error": "mlcycle: invalid config: spec.output: Field required"}


def test_an_unreadable_config_exits_without_a_report(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCYCLE_REPORT_DIR", str(tmp_path))
    with pytest.raises(SystemExit, match="cannot read"):
        main(["--config", str(tmp_path / "missing.json")])
    assert list(tmp_path.iterdir()) == []

"""The runtime's side of the contract: every config the operator renders parses, and the shared pieces agree.

The operator and the runtime never import each other; this test is the one place that holds both, so a
change on one side that the other cannot read fails here first.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mlcycle_operator.resources import monitor, serving, training
from mlcycle_runtime import config, reference, storage
from mlcycle_runtime.schema import Feature, FeatureSchema
from tests.unit.test_builders import (
    CANDIDATE,
    JOB_META,
    MD_META,
    MODEL_URI,
    MON_META,
    TRAFFIC,
    VARIANTS,
    VERSION,
    specs,
)

CHAMPION = {"model": "churn-classifier", "version": VERSION, "uri": MODEL_URI, "trainingJob": "churn-v0"}


def roundtrip(rendered: dict) -> dict:
    """What the pod reads: the ConfigMap's JSON text, decoded."""
    return json.loads(json.dumps(rendered))


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_trainer_reads_the_config_the_operator_renders(variant):
    project, job, _, _ = specs(variant)
    rendered = roundtrip(training.training_config(job, JOB_META, project, CHAMPION))
    cfg = config.parse(config.TrainConfig, rendered)
    assert cfg.name == JOB_META.name and cfg.namespace == JOB_META.namespace
    assert cfg.spec.data.label_column == job.data.label_column
    assert cfg.spec.output.model_name == job.output.model_name
    assert cfg.metric == rendered["metric"] and cfg.mode == rendered["mode"]
    assert cfg.champion is not None and (cfg.champion.model, cfg.champion.version, cfg.champion.uri) == (
        "churn-classifier", VERSION, MODEL_URI)
    assert (cfg.spec.tuning is None) == (job.tuning is None)
    assert cfg.spec.distribution.workers == job.distribution.workers
    assert cfg.report.status_field == "result"


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_model_server_and_router_read_their_configs(variant):
    _, _, md, _ = specs(variant)
    server = config.parse(config.ServeConfig, roundtrip(serving.server_config(md, MD_META, VERSION, MODEL_URI)))
    assert server.model.uri == MODEL_URI and server.port == serving.SERVER_PORT
    assert server.batching.max_batch_size == md.serving.batching.max_batch_size
    assert (server.online_features is None) == (md.serving.online_features is None)

    router = config.parse(config.RouterConfig, roundtrip(serving.router_config(md, MD_META, TRAFFIC, MODEL_URI)))
    assert [(r.version, r.weight, r.role) for r in router.routes] == [(VERSION, 90, "stable"),
                                                                      (CANDIDATE, 10, "candidate")]
    assert router.routes[0].url == serving.version_url(MD_META.name, MD_META.namespace, VERSION)
    assert router.reference_uri == MODEL_URI


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_drift_monitor_reads_its_config(variant):
    _, _, _, mon = specs(variant)
    rendered = roundtrip(monitor.monitor_config(mon, MON_META, {"stableVersion": VERSION},
                                                "http://prometheus:9090", MODEL_URI))
    cfg = config.parse(config.DriftConfig, rendered)
    assert cfg.version == VERSION and cfg.reference_uri == MODEL_URI
    assert cfg.spec.tests.numeric.method == mon.tests.numeric.method
    assert cfg.spec.min_samples == mon.min_samples and cfg.spec.window == mon.window


@pytest.mark.parametrize(("breaks", "field"), [
    (lambda c: c.pop("metric"), "metric"),
    (lambda c: c["spec"].pop("output"), "spec.output"),
    (lambda c: c["storage"].update(uri=3), "storage.uri"),
    (lambda c: c["spec"]["tuning"].update(numSamples=0), "spec.tuning.numSamples"),
])
def test_a_wrong_config_is_one_line_naming_the_field(breaks, field):
    project, job, _, _ = specs("example")
    rendered = roundtrip(training.training_config(job, JOB_META, project, None))
    breaks(rendered)
    with pytest.raises(config.ConfigError) as err:
        config.parse(config.TrainConfig, rendered)
    message = str(err.value)
    assert "\n" not in message and message.startswith("mlcycle: invalid config: " + field)


def test_a_missing_or_non_json_config_file_says_so(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(config.RouterConfig, tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(config.ConfigError, match="is not JSON"):
        config.load(config.RouterConfig, bad)


# --- schema: requests are checked and encoded exactly as training frames are ------------------------------------

SCHEMA = FeatureSchema((Feature("tenure_months", "numeric"), Feature("plan", "categorical",
                                                                    ("basic", "premium", "standard"))))


@pytest.mark.parametrize(("record", "problems"), [
    ({"tenure_months": 3, "plan": "basic"}, []),
    ({"tenure_months": None, "plan": None}, []),
    ({"plan": "basic"}, ["tenure_months: missing"]),
    ({"tenure_months": "3", "plan": "basic"}, ["tenure_months: expected a number, got str"]),
    ({"tenure_months": True, "plan": "basic"}, ["tenure_months: expected a number, got bool"]),
    ({"tenure_months": float("inf"), "plan": "basic"}, ["tenure_months: must be finite"]),
    # Found by the /predict fuzz run: an integer too large for a float was a 500 (OverflowError while encoding).
    ({"tenure_months": 10 ** 400, "plan": "basic"}, ["tenure_months: out of range: beyond ±3.403e+38, which the "
                                                      "model's float32 holds"]),
    ({"tenure_months": -1e39, "plan": "basic"}, ["tenure_months: out of range: beyond ±3.403e+38, which the "
                                                  "model's float32 holds"]),
    ({"tenure_months": 3.4e38, "plan": "basic"}, []),
    ({"tenure_months": 1, "plan": ["basic"]}, ["plan: expected a category (string), got list"]),
    ([1, 2], ["a record must be a JSON object, got list"]),
])
def test_schema_names_every_bad_field(record, problems):
    assert SCHEMA.problems(record) == problems


def test_records_and_frames_encode_identically():
    frame = pd.DataFrame({"tenure_months": [1, 24, None, 7], "plan": ["premium", None, "basic", "gold"]})
    by_frame = SCHEMA.encode_frame(frame)
    records = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
               for r in frame.to_dict("records")]
    np.testing.assert_array_equal(SCHEMA.encode_records(records), by_frame)
    assert np.isnan(by_frame[3, 1]), "an unseen category is missing, not a made-up code"


def test_infer_keeps_numbers_numeric_and_sorts_categories():
    frame = pd.DataFrame({"a": [1.5, 2.0], "b": ["y", "x"], "c": [True, False]})
    inferred = FeatureSchema.infer(frame, ["a", "b", "c"])
    assert [(f.name, f.kind, f.categories) for f in inferred.features] == [
        ("a", "numeric", ()), ("b", "categorical", ("x", "y")), ("c", "categorical", ("False", "True"))]
    assert FeatureSchema.from_json(inferred.to_json()) == inferred


# --- reference histograms: the router's scalar binning agrees with the trainer's vectorised one ---------------


def test_live_values_fall_in_the_bins_the_reference_counted():
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"tenure_months": rng.integers(0, 72, 2_000).astype(float),
                          "plan": rng.choice(["basic", "premium", "standard"], 2_000)})
    frame.loc[::97, "tenure_months"] = np.nan
    ref = reference.build(frame, SCHEMA, rng.random(2_000), bins=10)
    for name in ("tenure_months", "plan"):
        hist = ref.features[name]
        live = [reference.bin_value(hist, None if (isinstance(v, float) and np.isnan(v)) else v)
                for v in frame[name]]
        counts = [live.count(str(i)) for i in range(hist.bins)]
        assert counts == hist.counts and live.count(reference.MISSING) == hist.missing
    assert sum(ref.prediction.counts) == 2_000
    assert reference.Reference.from_json(json.loads(json.dumps(ref.to_json()))).to_json() == ref.to_json()


def test_edges_collapse_on_a_spike_and_unseen_categories_go_last():
    values = np.array([0.0] * 90 + list(range(1, 11)), dtype=float)
    edges = reference.quantile_edges(values, 10)
    assert edges == sorted(set(edges)) and len(edges) < 9
    hist = reference.histogram_categorical(["a", "b", "zzz", None], ["a", "b"])
    assert hist.counts == [1, 1, 1] and hist.missing == 1
    assert reference.bin_value(hist, "zzz") == "2"


# --- storage: versions are immutable and only complete versions are read ---------------------------------------


def test_a_version_is_published_once_and_read_only_when_complete(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / storage.MODEL_CARD).write_text('{"name": "m"}')
    uri = storage.version_uri(f"file://{tmp_path}/store", "p/models/m", "v1")
    storage.publish(src, uri)
    assert storage.exists(uri) and storage.read_json(uri, storage.MODEL_CARD) == {"name": "m"}
    with pytest.raises(storage.VersionExists, match="immutable"):
        storage.publish(src, uri)
    fetched = storage.fetch(uri, tmp_path / "fetched")
    assert (fetched / storage.MODEL_CARD).read_text() == '{"name": "m"}'

    half = storage.version_uri(f"file://{tmp_path}/store", "p/models/m", "v2")
    (tmp_path / "store/p/models/m/v2").mkdir(parents=True)
    (tmp_path / "store/p/models/m/v2" / storage.MODEL_CARD).write_text("{}")
    with pytest.raises(storage.VersionNotFound, match="incomplete"):
        storage.read_json(half, storage.MODEL_CARD)
    with pytest.raises(storage.VersionExists):
        storage.publish(src, half)
    with pytest.raises(storage.VersionNotFound, match="does not exist"):
        storage.fetch(storage.version_uri(f"file://{tmp_path}/store", "p/models/m", "v9"), tmp_path / "x")

    monkeypatch.setenv(storage.PVC_ROOT_ENV, str(tmp_path / "mnt"))
    assert storage.resolve("pvc://claim/artifacts") == f"file://{tmp_path}/mnt/claim/artifacts"


def test_a_cluster_reporter_pickles_without_its_client():
    """Ray Tune pickles the callbacks that carry the reporter; an open API client must not travel with it."""
    import pickle

    from mlcycle_runtime.report import Reporter

    reporter = Reporter("TrainingJob", "churn-v1", "ml", "result", cluster=True)
    reporter._api = object.__new__(type("Unpicklable", (), {"__reduce__": lambda self: 1 / 0}))
    copy = pickle.loads(pickle.dumps(reporter))
    assert (copy.kind, copy.name, copy.namespace, copy.status_field, copy.cluster) == (
        "TrainingJob", "churn-v1", "ml", "result", True)
    assert copy._api is None

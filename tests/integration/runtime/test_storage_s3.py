"""s3:// project storage against a real S3 API: moto's server as a separate process on loopback, reached through
s3fs/botocore with the standard AWS variables. Publish, read back, immutability and the refusals; then the trainer
(a subprocess, reading its data from the bucket too) exports a version there and the server's and the drift
monitor's loaders read it back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mlcycle_runtime import storage
from tests.harness.cluster import free_port
from tests.harness.pytest_support import unavailable
from tests.harness.s3 import MotoS3, missing

ROOT = Path(__file__).resolve().parents[3]
BUCKET = "mlcycle-models"
FILES = {storage.MODEL_CARD: b'{"name": "m"}\n', storage.REFERENCE: b'{"features": {}}\n',
         storage.BENTO_EXPORT: bytes(range(256)) * 64}
TRAIN_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def moto(tmp_path_factory) -> MotoS3:
    if reason := missing():
        unavailable("moto S3 server", reason)
    server = MotoS3(tmp_path_factory.mktemp("moto"))
    try:
        server.start()
    except RuntimeError as err:
        unavailable("moto S3 server", str(err))
    server.create_bucket(BUCKET)
    yield server
    server.stop()


@pytest.fixture
def s3_env(moto, monkeypatch) -> MotoS3:
    """This process's AWS variables pointed at the server, as a pod's would be at MinIO."""
    for name in (*storage.S3_ENDPOINT_ENVS, "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in moto.env().items():
        monkeypatch.setenv(name, value)
    return moto


@pytest.fixture
def version_dir(tmp_path) -> Path:
    local = tmp_path / "version"
    local.mkdir()
    for name, data in FILES.items():
        (local / name).write_bytes(data)
    return local


def test_a_version_is_published_to_s3_and_read_back(s3_env, version_dir, tmp_path):
    uri = f"s3://{BUCKET}/churn/models/m/v-roundtrip"
    assert not storage.exists(uri)
    storage.publish(version_dir, uri)
    keys = s3_env.keys(BUCKET, "churn/models/m/v-roundtrip/")
    assert keys == sorted(f"churn/models/m/v-roundtrip/{n}" for n in [*FILES, storage.COMPLETE])
    marker = s3_env.client().get_object(Bucket=BUCKET, Key=f"churn/models/m/v-roundtrip/{storage.COMPLETE}")
    assert marker["Body"].read().decode().split() == sorted(FILES)
    assert storage.exists(uri)
    assert storage.read_json(uri, storage.MODEL_CARD) == {"name": "m"}
    fetched = storage.fetch(uri, tmp_path / "fetched")
    complete = ("\n".join(sorted(FILES)) + "\n").encode()
    assert {p.name: p.read_bytes() for p in fetched.iterdir()} == {**FILES, storage.COMPLETE: complete}


def test_the_service_specific_endpoint_variable_is_honoured(s3_env, version_dir, monkeypatch):
    # AWS_ENDPOINT_URL_S3 wins over AWS_ENDPOINT_URL, as in botocore: the general one now points nowhere.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_env.endpoint)
    uri = f"s3://{BUCKET}/churn/models/m/v-specific"
    storage.publish(version_dir, uri)
    assert storage.exists(uri)
    assert s3_env.keys(BUCKET, "churn/models/m/v-specific/")


def test_a_published_version_is_never_overwritten(s3_env, version_dir, tmp_path):
    uri = f"s3://{BUCKET}/churn/models/m/v-immutable"
    storage.publish(version_dir, uri)
    (version_dir / storage.MODEL_CARD).write_bytes(b'{"name": "other"}\n')
    with pytest.raises(storage.VersionExists, match=f"model version {uri} already exists; versions are immutable"):
        storage.publish(version_dir, uri)
    assert storage.read_json(uri, storage.MODEL_CARD) == {"name": "m"}


def test_a_prefix_holding_anything_is_not_published_over(s3_env, version_dir):
    # A job that died half-way left files but no _COMPLETE: still not a place to publish.
    uri = f"s3://{BUCKET}/churn/models/m/v-partial"
    s3_env.client().put_object(Bucket=BUCKET, Key="churn/models/m/v-partial/model.json", Body=b"{}")
    with pytest.raises(storage.VersionExists, match="v-partial already exists"):
        storage.publish(version_dir, uri)


def test_an_empty_folder_marker_does_not_count_as_a_version(s3_env, version_dir, tmp_path):
    # Consoles and some tools make "folders" as a zero-byte `<prefix>/` object; S3 has no empty directories else.
    uri = f"s3://{BUCKET}/churn/models/m/v-folder"
    s3_env.client().put_object(Bucket=BUCKET, Key="churn/models/m/v-folder/", Body=b"")
    assert not storage.exists(uri)
    storage.publish(version_dir, uri)
    fetched = storage.fetch(uri, tmp_path / "fetched")
    assert sorted(p.name for p in fetched.iterdir()) == sorted([*FILES, storage.COMPLETE])


def test_a_reader_refuses_a_version_without_its_complete_marker(s3_env, tmp_path):
    uri = f"s3://{BUCKET}/churn/models/m/v-incomplete"
    for name, data in FILES.items():
        s3_env.client().put_object(Bucket=BUCKET, Key=f"churn/models/m/v-incomplete/{name}", Body=data)
    assert not storage.exists(uri)
    with pytest.raises(storage.VersionNotFound, match=f"model version {uri} is incomplete"):
        storage.fetch(uri, tmp_path / "fetched")
    with pytest.raises(storage.VersionNotFound, match="is incomplete"):
        storage.read_json(uri, storage.REFERENCE)
    assert not (tmp_path / "fetched").exists()


def test_a_version_completed_by_another_process_is_seen(s3_env, version_dir):
    # The poller's first look finds nothing; the trainer (here: boto3) then completes the version.
    uri = f"s3://{BUCKET}/churn/models/m/v-later"
    assert not storage.exists(uri)
    client = s3_env.client()
    for name, data in FILES.items():
        client.put_object(Bucket=BUCKET, Key=f"churn/models/m/v-later/{name}", Body=data)
    assert not storage.exists(uri)
    with pytest.raises(storage.VersionExists):  # lists the prefix: a listing cache would now hold it
        storage.publish(version_dir, uri)
    client.put_object(Bucket=BUCKET, Key=f"churn/models/m/v-later/{storage.COMPLETE}", Body=b"done\n")
    assert storage.exists(uri)
    assert storage.read_json(uri, storage.MODEL_CARD) == {"name": "m"}


def test_a_missing_version_and_a_missing_bucket_are_told_apart(s3_env, version_dir, tmp_path):
    with pytest.raises(storage.VersionNotFound, match=r"v-none does not exist$"):
        storage.fetch(f"s3://{BUCKET}/churn/models/m/v-none", tmp_path / "a")
    uri = "s3://no-such-bucket/churn/models/m/v1"
    with pytest.raises(storage.VersionNotFound, match="bucket 'no-such-bucket' does not exist at S3 endpoint "
                                                      f"{s3_env.endpoint}"):
        storage.read_json(uri, storage.MODEL_CARD)
    # Publishing never creates the bucket (a typo would otherwise make one and scatter versions there).
    with pytest.raises(storage.StorageError, match=f"cannot publish model version {uri}: bucket 'no-such-bucket'"):
        storage.publish(version_dir, uri)
    assert "no-such-bucket" not in [b["Name"] for b in s3_env.client().list_buckets()["Buckets"]]


def test_an_unreachable_endpoint_is_a_clear_storage_error(s3_env, version_dir, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries only cost time here
    uri = f"s3://{BUCKET}/churn/models/m/v-unreachable"
    with pytest.raises(storage.StorageError, match=f"cannot use {uri} at S3 endpoint {dead}: EndpointConnectionError"):
        storage.exists(uri)
    with pytest.raises(storage.StorageError, match=f"cannot use {uri} at S3 endpoint {dead}"):
        storage.publish(version_dir, uri)


def test_bad_credentials_are_a_clear_storage_error(s3_env, monkeypatch):
    # moto accepts any key pair; without one botocore cannot sign at all.
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    # A distinct endpoint spelling, so fsspec does not hand back the filesystem that already holds credentials.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint.replace("127.0.0.1", "localhost"))
    with pytest.raises(storage.StorageError, match="NoCredentialsError"):
        storage.exists(f"s3://{BUCKET}/churn/models/m/v-creds")


# --- the trainer exports to S3; the server's and the monitor's loaders read it back ---------------------------


def train_config(source: str, storage_uri: str) -> dict[str, Any]:
    return {
        "kind": "TrainingJob", "name": "s3", "namespace": "ml", "project": "churn", "metric": "roc_auc",
        "mode": "max", "storage": {"uri": storage_uri, "modelPath": "churn/models/churn-classifier"},
        "report": {"statusField": "result"},
        "spec": {
            "project": "churn",
            "data": {"source": {"uri": source, "timestampColumn": "event_timestamp",
                                "entityColumns": ["customer_id"]},
                     "labelColumn": "churned", "split": {"validationFraction": 0.2, "testFraction": 0.1}},
            "validation": {"minRows": 100},
            "model": {"framework": "xgboost", "params": {"tree_method": "hist", "num_boost_round": 20,
                                                         "max_depth": 3}},
            "tuning": {"numSamples": 1, "scheduler": {"type": "none"}},
            "distribution": {"workers": 1, "cpuPerWorker": 1},
            "evaluation": {"baselines": ["zeroRule"], "slices": [], "calibration": False},
            "output": {"modelName": "churn-classifier"},
        },
    }


@pytest.fixture(scope="module")
def trained(moto, tmp_path_factory) -> tuple[dict[str, Any], Path]:
    try:
        from examples.churn.generate import write
    except ImportError as err:
        unavailable("churn data generator", str(err))
    work = tmp_path_factory.mktemp("train-s3")
    data = Path(write(work / "data", rows=800)["customers"])
    bucket = moto.create_bucket("mlcycle-project")
    moto.client().upload_file(str(data), bucket, "data/customers.parquet")
    config = train_config(f"s3://{bucket}/data/customers.parquet", f"s3://{bucket}/store")
    path = work / "config.json"
    path.write_text(json.dumps(config))
    reports = work / "reports"
    env = {k: v for k, v in os.environ.items()
           if k not in {"KUBERNETES_SERVICE_HOST", "RAY_ADDRESS", *storage.S3_ENDPOINT_ENVS}}
    env.update(moto.env(), MLCYCLE_REPORT_DIR=str(reports), BENTOML_HOME=str(work / "bentoml"),
               MLCYCLE_IMAGE="ghcr.io/mlcycle/runtime:test", PYTHONPATH=str(ROOT / "runtime"))
    proc = subprocess.run([sys.executable, "-m", "mlcycle_runtime.train", "--config", str(path)], env=env,
                          cwd=work, capture_output=True, text=True, timeout=TRAIN_TIMEOUT_S)
    report_file = reports / "trainingjob-s3.json"
    assert report_file.exists(), f"no report; stderr:\n{proc.stderr[-3000:]}"
    report = json.loads(report_file.read_text())
    assert proc.returncode == 0 and report["phase"] == "Succeeded", (report.get("error"), proc.stderr[-3000:])
    return report, work


def test_the_trainer_exports_to_s3_and_the_server_and_monitor_read_it(trained, s3_env, tmp_path, monkeypatch):
    from mlcycle_runtime.config import DriftConfig
    from mlcycle_runtime.drift.monitor import Monitor
    from mlcycle_runtime.model import load_version

    report, _ = trained
    model = report["model"]
    uri = model["uri"]
    assert uri == f"s3://mlcycle-project/store/churn/models/churn-classifier/{model['version']}"
    keys = s3_env.keys("mlcycle-project", f"store/churn/models/churn-classifier/{model['version']}/")
    assert [k.rsplit("/", 1)[1] for k in keys] == sorted(
        [storage.COMPLETE, storage.BENTO_EXPORT, storage.MODEL_CARD, storage.REFERENCE])

    # The model server's path: fetch, import the BentoML export, predict on the schema's encoding.
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    loaded = load_version(uri, tmp_path / "fetched")
    assert (loaded.card.name, loaded.card.version, loaded.card.framework) == (
        "churn-classifier", model["version"], "xgboost")
    row = {"tenure_months": 12, "monthly_charges": 70.5, "support_calls": 3, "data_usage_gb": 4.2,
           "contract": "month-to-month", "plan": "basic", "region": "north"}
    score = loaded.predictor.predict(loaded.card.features.encode_records([row]))
    assert score.shape == (1,) and 0.0 <= float(score[0]) <= 1.0

    # The drift monitor's path: the reference histograms straight from the bucket.
    monitor = Monitor(DriftConfig.model_validate({
        "name": "churn-drift", "deployment": "churn", "referenceUri": uri, "prometheusUrl": "http://127.0.0.1:9",
        "spec": {"deployment": "churn"}}))
    ref = monitor.load_reference()
    assert set(ref.features) == set(loaded.card.features.names)
    assert ref.rows == report["lineage"]["rows"]["train"]

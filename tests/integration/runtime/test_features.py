"""The runtime's Feast helpers against real Feast: the example's definitions applied through the CLI, point-in-time
joins over real Parquet files, and online lookups from SQLite and from a real redis-server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from examples.churn.generate import write
from mlcycle_runtime.features import FeatureStoreError, apply, historical_features, materialize, online_features
from tests.harness.pytest_support import unavailable

ROOT = Path(__file__).resolve().parents[3]
DEFINITIONS = ROOT / "examples" / "churn" / "feature_repo"
FEATURES = ["tenure_months", "contract", "plan", "region", "monthly_charges", "support_calls", "data_usage_gb"]
KEYS = ["customer_id", "event_timestamp"]
LATE_CHARGES = 119.99
NEW_CUSTOMER = 999_999


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mlcycle_runtime.features", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)


def _repo(directory: Path, online_store: dict) -> Path:
    """A repo like the operator's /etc/feast: feature_store.yaml alone, registry and store elsewhere."""
    directory.mkdir(parents=True)
    config = {"project": "churn", "registry": str(directory.parent / f"{directory.name}-registry.db"),
              "provider": "local", "offline_store": {"type": "file"}, "online_store": online_store,
              "entity_key_serialization_version": 3}
    (directory / "feature_store.yaml").write_text(yaml.safe_dump(config))
    return directory


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """A few thousand observations ending ten days ago (inside every view's TTL, so materialization from "now"
    finds them), plus two usage rows written on purpose after the facts they must not leak into."""
    directory = tmp_path_factory.mktemp("churn-data")
    start = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=60)).strftime("%Y-%m-%d")
    paths = write(directory, rows=3_000, start=start, days=50)
    customers = pd.read_parquet(paths["customers"])
    usage = pd.read_parquet(paths["customer_usage"])
    # The case under test: customer X's last observation at t; a new usage value arrives at t + 2h.
    x = int(customers.customer_id.iloc[-1])
    last = customers[customers.customer_id == x].iloc[-1]
    late = pd.DataFrame({"customer_id": [x, NEW_CUSTOMER],
                         "event_timestamp": [last.event_timestamp + pd.Timedelta(hours=2)] * 2,
                         "monthly_charges": [LATE_CHARGES, 50.0], "support_calls": [9, 1],
                         "data_usage_gb": [1.0, 2.0]})
    pd.concat([usage, late], ignore_index=True).to_parquet(paths["customer_usage"], index=False)
    return {"dir": directory, "customers": customers, "labels": pd.read_parquet(paths["churn_labels"]),
            "x": x, "last": last, "late_time": late.event_timestamp.iloc[0]}


@pytest.fixture(scope="module")
def sqlite_repo(data, tmp_path_factory) -> Path:
    """The example's definitions applied and materialized through the CLI, as the operator's CronJob runs it."""
    base = tmp_path_factory.mktemp("feast-sqlite")
    repo = _repo(base / "repo", {"type": "sqlite", "path": str(base / "online.db")})
    applied = _cli("apply", "--repo", str(repo), "--definitions", str(DEFINITIONS), "--data", str(data["dir"]))
    assert applied.returncode == 0, applied.stderr
    assert "Created feature service churn_features" in applied.stdout
    materialized = _cli("materialize", "--repo", str(repo))
    assert materialized.returncode == 0, materialized.stderr
    assert "customer_usage: materialized up to" in materialized.stdout
    assert "customer_profile: materialized up to" in materialized.stdout
    return repo


def test_training_frame_from_feast_equals_the_generated_table(sqlite_repo, data):
    """Joining the label rows with the feature service rebuilds customers.parquet, row for row."""
    joined = historical_features(sqlite_repo, data["labels"], feature_service="churn_features")
    expected = data["customers"]
    assert list(joined.columns[:3]) == [*KEYS, "churned"]
    pd.testing.assert_frame_equal(joined[[*KEYS, "churned", *FEATURES]], expected[[*KEYS, "churned", *FEATURES]],
                                  check_dtype=False)


def test_a_value_written_after_an_entity_row_does_not_leak_into_it(sqlite_repo, data):
    x, last, late_time = data["x"], data["last"], data["late_time"]
    entity = pd.DataFrame({
        "customer_id": [x, x, NEW_CUSTOMER],
        "event_timestamp": [late_time - pd.Timedelta(hours=1), late_time + pd.Timedelta(hours=1),
                            late_time - pd.Timedelta(seconds=1)],
    })
    joined = historical_features(sqlite_repo, entity, features=["customer_usage:monthly_charges",
                                                                "customer_usage:support_calls"])
    before, after, unknown_yet = joined.to_dict("records")
    # Between t and t + 2h the customer's charges are those observed at t, not the value from the future.
    assert before["monthly_charges"] == pytest.approx(last.monthly_charges, nan_ok=True)
    assert before["support_calls"] == last.support_calls
    assert after["monthly_charges"] == LATE_CHARGES
    assert after["support_calls"] == 9
    # A customer whose first row comes a second later has no features yet.
    assert pd.isna(unknown_yet["monthly_charges"]) and pd.isna(unknown_yet["support_calls"])


def test_every_entity_row_comes_back_in_order_even_without_values(sqlite_repo, data):
    """Rows past one view's TTL, unknown customers and rows sharing key and timestamp all keep their place
    and their own columns (Feast's file store alone would drop or collapse them)."""
    x, last, late_time = data["x"], data["last"], data["late_time"]
    past_usage_ttl = late_time + pd.Timedelta(days=91)
    entity = pd.DataFrame({
        "customer_id": [x, 12345, x, x],
        "event_timestamp": [past_usage_ttl, late_time, late_time, late_time],
        "order_id": ["a", "b", "c", "d"],
    })
    rows = historical_features(sqlite_repo, entity, feature_service="churn_features").to_dict("records")
    assert [r["order_id"] for r in rows] == ["a", "b", "c", "d"]
    expired, unknown, twin, other_twin = rows
    assert pd.isna(expired["monthly_charges"])  # customer_usage: 90-day TTL
    assert expired["plan"] == last.plan  # customer_profile: 365-day TTL, still valid
    assert all(pd.isna(unknown[name]) for name in FEATURES)
    assert twin["monthly_charges"] == other_twin["monthly_charges"] == LATE_CHARGES
    assert twin["tenure_months"] == other_twin["tenure_months"] == last.tenure_months


def _check_online(repo: Path, data: dict) -> None:
    x, last = data["x"], data["last"]
    rows = online_features(repo, "churn_features", [{"customer_id": x}, {"customer_id": 12345}])
    known, unknown = rows
    assert known["customer_id"] == x
    assert known["monthly_charges"] == LATE_CHARGES  # the newest value, written after the last label
    assert known["support_calls"] == 9
    assert (known["plan"], known["contract"], known["region"]) == (last.plan, last.contract, last.region)
    assert known["tenure_months"] == last.tenure_months
    assert unknown["customer_id"] == 12345
    assert all(unknown[name] is None for name in FEATURES)


def test_online_features_from_sqlite(sqlite_repo, data):
    _check_online(sqlite_repo, data)
    assert online_features(sqlite_repo, "churn_features", []) == []


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    from tests.harness.redis import Redis

    if shutil.which("redis-server") is None:
        unavailable("redis-server", "the 'redis-server' binary is not installed (make system-deps)")
    server = Redis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def test_online_features_from_redis(redis_server, data, tmp_path):
    repo = _repo(tmp_path / "repo", {"type": "redis", "connection_string": redis_server.address})
    apply(repo, definitions=DEFINITIONS, data=data["dir"])
    # A backfill from the first observation, where the CLI test above ran incrementally.
    views = dict(materialize(repo, start=data["customers"].event_timestamp.min()))
    assert set(views) == {"customer_profile", "customer_usage"}
    assert all(mark is not None for mark in views.values())
    _check_online(repo, data)


def test_definitions_mounted_from_a_configmap_apply(data, tmp_path):
    """A ConfigMap volume as the kubelet lays it out: each file a link into ..data, itself a link to a
    ..<timestamp> directory. Feast's own scan imported those a second time, as modules named with dots."""
    mount = tmp_path / "definitions"
    stamped = mount / "..2026_12_06_00_00_00.000000001"
    stamped.mkdir(parents=True)
    shutil.copyfile(DEFINITIONS / "features.py", stamped / "features.py")
    (mount / "..data").symlink_to(stamped.name)
    (mount / "features.py").symlink_to("..data/features.py")
    repo = _repo(tmp_path / "repo", {"type": "sqlite", "path": str(tmp_path / "online.db")})
    apply(repo, definitions=mount, data=data["dir"])
    views = dict(materialize(repo, start=data["customers"].event_timestamp.min()))
    assert set(views) == {"customer_profile", "customer_usage"}


def test_materializing_into_a_redis_nobody_runs_fails_in_one_line_naming_it(data, tmp_path):
    """The example names a Redis the cluster may not have: the job says so instead of a client traceback."""
    import socket

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    repo = _repo(tmp_path / "repo", {"type": "redis", "connection_string": address})
    apply(repo, definitions=DEFINITIONS, data=data["dir"])
    result = _cli("materialize", "--repo", str(repo))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: the online store (redis at {address}) cannot be written: "), error


def test_cli_refuses_a_directory_without_feature_store_yaml(tmp_path):
    result = _cli("apply", "--repo", str(tmp_path), "--definitions", str(DEFINITIONS))
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {tmp_path} is not a Feast repository: it has no feature_store.yaml"


def test_clear_errors_for_an_empty_registry_and_unknown_names(tmp_path, sqlite_repo, data):
    empty = _repo(tmp_path / "repo", {"type": "sqlite", "path": str(tmp_path / "online.db")})
    with pytest.raises(FeatureStoreError, match=r"has no feature views: run .* apply"):
        materialize(empty)
    with pytest.raises(FeatureStoreError, match="no Feast definitions"):
        apply(empty, definitions=tmp_path)
    with pytest.raises(FeatureStoreError, match=r"definitions directory .*/nowhere does not exist"):
        apply(empty, definitions=tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "feature_store.yaml").write_text("registry: registry.db\nprovider: local\n")
    with pytest.raises(FeatureStoreError, match=r"broken/feature_store.yaml: .*project"):
        materialize(broken)
    (broken / "feature_store.yaml").write_text("project: [churn\n")
    with pytest.raises(FeatureStoreError, match=r"broken/feature_store.yaml: "):
        materialize(broken)
    with pytest.raises(FeatureStoreError, match="no feature service 'churn' in project 'churn'; known: churn_features"):
        historical_features(sqlite_repo, data["labels"].head(), feature_service="churn")
    with pytest.raises(ValueError, match="not both or neither"):
        historical_features(sqlite_repo, data["labels"].head())
    with pytest.raises(ValueError, match=r"needs one timestamp column \(event_timestamp\).*found none"):
        historical_features(sqlite_repo, data["labels"][["customer_id"]], feature_service="churn_features")
    with pytest.raises(ValueError, match=r"no entity join key column \(expected one of \['customer_id'\]\)"):
        historical_features(sqlite_repo, data["labels"].rename(columns={"customer_id": "id"}),
                            feature_service="churn_features")

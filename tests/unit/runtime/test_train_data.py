"""Training data: reading Parquet (and refusing bad files in words), feature columns, the data fingerprint."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlcycle_runtime.config import TrainConfig
from mlcycle_runtime.train import data


def frame(rows: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"customer_id": np.arange(rows),
                         "event_timestamp": pd.date_range("2026-01-01", periods=rows, freq="h", tz="UTC"),
                         "tenure_months": rng.integers(0, 72, rows), "plan": rng.choice(["a", "b"], rows),
                         "churned": rng.integers(0, 2, rows)})


def config(uri: str = "x.parquet", features: list[str] | None = None) -> TrainConfig:
    spec = {"project": "p", "data": {"source": {"uri": uri, "entityColumns": ["customer_id"]},
                                     "labelColumn": "churned", "features": features or []},
            "model": {"framework": "xgboost"}, "output": {"modelName": "m"}}
    return TrainConfig.model_validate({"name": "j", "project": "p", "metric": "roc_auc", "spec": spec,
                                       "storage": {"uri": "/tmp/s", "modelPath": "p/models/m"}})


def test_fingerprint_ignores_row_and_column_order():
    df = frame()
    shuffled = df.sample(frac=1.0, random_state=3)[list(reversed(df.columns))]
    assert data.fingerprint(df) == data.fingerprint(shuffled.reset_index(drop=True))
    assert data.fingerprint(df).startswith("sha256:") and len(data.fingerprint(df)) == 7 + 64


@pytest.mark.parametrize("change", ["value", "dtype", "rename", "drop-row"])
def test_fingerprint_changes_with_the_data(change):
    df = frame()
    other = df.copy()
    if change == "value":
        other.loc[3, "tenure_months"] += 1
    elif change == "dtype":
        other["tenure_months"] = other["tenure_months"].astype(float)
    elif change == "rename":
        other = other.rename(columns={"plan": "tier"})
    else:
        other = other.iloc[1:]
    assert data.fingerprint(df) != data.fingerprint(other)


def test_features_are_every_column_but_label_time_and_entities():
    assert data.feature_columns(frame(), config()) == ["tenure_months", "plan"]


def test_listed_features_are_taken_as_named_without_their_view():
    assert data.feature_columns(frame(), config(features=["profile:plan", "tenure_months"])) == [
        "plan", "tenure_months"]


def test_reads_a_file_and_a_directory(tmp_path):
    df = frame()
    df.to_parquet(tmp_path / "one.parquet")
    (tmp_path / "dir").mkdir()
    df.iloc[:20].to_parquet(tmp_path / "dir" / "a.parquet")
    df.iloc[20:].to_parquet(tmp_path / "dir" / "b.parquet")
    assert data.read_parquet(str(tmp_path / "one.parquet")).shape == df.shape
    assert data.read_parquet(f"file://{tmp_path}/dir").shape == df.shape
    loaded = data.load(config(str(tmp_path / "dir")))
    assert loaded.fingerprint == data.fingerprint(df)
    assert loaded.feature_refs == ["tenure_months", "plan"]


def test_pvc_uris_read_under_the_claim_mount(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCYCLE_PVC_ROOT", str(tmp_path))
    (tmp_path / "claim" / "data").mkdir(parents=True)
    frame().to_parquet(tmp_path / "claim" / "data" / "c.parquet")
    assert len(data.read_parquet("pvc://claim/data/c.parquet")) == 50


def test_a_corrupt_file_is_named(tmp_path):
    bad = tmp_path / "customers.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(data.DataError, match=f"data source {bad} is not readable Parquet: "):
        data.read_parquet(str(bad))


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(data.DataError, match=r"data source .*nope\.parquet does not exist"):
        data.read_parquet(str(tmp_path / "nope.parquet"))


def test_label_classes_are_sorted_plain_values():
    assert data.label_classes(pd.Series([1, 0, 1, None])) == [0.0, 1.0]
    assert data.label_classes(pd.Series(["yes", "no"])) == ["no", "yes"]
    assert all(type(c) is int for c in data.label_classes(pd.Series(np.array([1, 0]))))

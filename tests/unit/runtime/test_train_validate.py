"""Data validation: every rule, every violation listed in words, nothing stops at the first problem."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlcycle_runtime.config import ColumnRule, TrainConfig
from mlcycle_runtime.train.validate import check_column, violations


def config(**spec_changes) -> TrainConfig:
    spec = {"project": "churn", "data": {"source": {"uri": "x.parquet", "entityColumns": ["customer_id"]},
                                         "labelColumn": "churned"},
            "model": {"framework": "xgboost"}, "output": {"modelName": "m"}, **spec_changes}
    return TrainConfig.model_validate({"name": "j", "project": "churn", "metric": "roc_auc", "spec": spec,
                                       "storage": {"uri": "/tmp/s", "modelPath": "churn/models/m"}})


def frame(rows: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "customer_id": np.arange(rows),
        "event_timestamp": pd.date_range("2026-01-01", periods=rows, freq="h", tz="UTC"),
        "tenure_months": rng.integers(0, 72, rows),
        "monthly_charges": rng.uniform(20, 120, rows),
        "plan": rng.choice(["basic", "standard", "premium"], rows),
        "churned": np.arange(rows) % 2,
    })


FEATURES = ["tenure_months", "monthly_charges", "plan"]


def test_clean_data_has_no_violations():
    rules = {"minRows": 10, "columns": [{"name": "tenure_months", "type": "int", "min": 0, "max": 600},
                                        {"name": "plan", "type": "string", "allowedValues": ["basic", "standard",
                                                                                             "premium"]}]}
    assert violations(frame(), config(validation=rules), FEATURES, 140) == []


def test_out_of_range_values_are_counted_with_examples():
    df = frame()
    df.loc[:11, "tenure_months"] = [720, 999] * 6
    df.loc[20:22, "monthly_charges"] = -5.0
    rules = {"minRows": 10, "columns": [{"name": "tenure_months", "max": 600},
                                        {"name": "monthly_charges", "min": 0}]}
    found = violations(df, config(validation=rules), FEATURES, 140)
    assert found == ["tenure_months: 12 values above max 600 (e.g. 720, 999)",
                     "monthly_charges: 3 values below min 0 (e.g. -5)"]


def test_every_kind_of_violation_is_listed_at_once():
    df = frame()
    df["tenure_months"] = df["tenure_months"].astype(float)
    df.loc[0, "tenure_months"] = 1.5
    df.loc[:9, "monthly_charges"] = np.nan
    df.loc[0, "plan"] = "gold"
    df.loc[1, "churned"] = np.nan
    df["extra"] = 1
    df = df.drop(columns=["customer_id"])
    rules = {"minRows": 500, "allowExtraColumns": False, "columns": [
        {"name": "tenure_months", "type": "int"},
        {"name": "monthly_charges", "type": "float", "maxMissingFraction": 0.01},
        {"name": "plan", "type": "string", "allowedValues": ["basic", "standard", "premium"]},
        {"name": "region", "type": "string"},
    ]}
    found = violations(df, config(validation=rules), FEATURES, 140)
    assert found == [
        "churned: 1 rows without a label",
        "customer_id: entity column missing",
        "tenure_months: expected int, got 1 non-integer values (e.g. 1.5)",
        "monthly_charges: 5.00% missing (10 of 200), above maxMissingFraction 1.00%",
        "plan: 1 values not in allowedValues [basic, standard, premium] (e.g. 'gold')",
        "region: column missing",
        "extra: column has no rule and allowExtraColumns is false",
        "rows: 140 training rows after the split (of 200), fewer than minRows 500",
    ]


def test_missing_label_timestamp_and_feature_columns_are_named():
    df = frame().drop(columns=["churned", "event_timestamp", "plan"])
    found = violations(df, config(validation={"minRows": 1}), FEATURES, 140)
    assert found == ["churned: label column missing",
                     "event_timestamp: timestamp column missing (the split needs it)",
                     "plan: feature column missing"]


def test_a_binary_label_needs_two_values():
    df = frame()
    df["churned"] = 0
    found = violations(df, config(validation={"minRows": 1}), FEATURES, 140)
    assert found == ["churned: a binary task needs exactly 2 label values, found 1 (e.g. 0)"]


def test_a_regression_label_must_be_numeric():
    df = frame()
    df["churned"] = "yes"
    cfg = config(validation={"minRows": 1}, model={"framework": "xgboost", "task": "regression"})
    assert violations(df, cfg, FEATURES, 140) == ["churned: a regression label must be numeric, got object"]


def test_timestamps_must_be_timestamps():
    df = frame()
    df["event_timestamp"] = "yesterday"
    found = violations(df, config(validation={"minRows": 1}), FEATURES, 140)
    assert found == ["event_timestamp: expected timestamps for the time split, got object"]


@pytest.mark.parametrize(("values", "rule", "expected"), [
    pytest.param([1, 2, 3], {"type": "string"}, ["c: expected string, got int64"], id="string"),
    pytest.param(["a", "b", "c"], {"type": "float"}, ["c: expected float, got object"], id="float"),
    pytest.param([1.0, 2.0, 3.0], {"type": "int"}, [], id="integral-floats-are-ints"),
    pytest.param([1, 0, 1], {"type": "bool"}, ["c: expected bool, got int64"], id="bool"),
    pytest.param([True, False, True], {"type": "bool"}, [], id="bool-ok"),
    pytest.param([1, 2, 3], {"type": "timestamp"}, ["c: expected timestamp, got int64"], id="timestamp"),
    pytest.param(["a", 1, "b"], {"type": "string"}, ["c: expected string, got 1 non-string values (e.g. '1')"],
                 id="mixed"),
    pytest.param(["a", "b", "c"], {"min": 0}, ["c: min/max need a numeric column, got object"], id="range-on-text"),
    pytest.param([1.0, None, None], {"maxMissingFraction": 0.5},
                 ["c: 66.67% missing (2 of 3), above maxMissingFraction 50.00%"], id="missing"),
    pytest.param([1.0, None, 3.0], {"maxMissingFraction": 0.5}, [], id="missing-within-limit"),
])
def test_column_rules(values, rule, expected):
    assert check_column(pd.Series(values, name="c"), ColumnRule(name="c", **rule)) == expected

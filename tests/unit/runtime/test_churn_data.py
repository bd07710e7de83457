"""The worked example's data generator: deterministic, in range, with the drifts it promises and no others."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from examples.churn import generate as gen
from examples.churn.generate import Drift, generate, write

ROWS = 8_000
DRIFT_FROM = "2026-04-01"


@pytest.fixture(scope="module")
def base() -> pd.DataFrame:
    return generate(rows=ROWS)


def test_same_arguments_same_rows_and_same_bytes(tmp_path, base):
    pd.testing.assert_frame_equal(base, generate(rows=ROWS))
    first = write(tmp_path / "a", rows=2_000)
    second = write(tmp_path / "b", rows=2_000)
    assert set(first) == {"customers", "customer_profile", "customer_usage", "churn_labels"}
    for name, path in first.items():
        assert path.read_bytes() == second[name].read_bytes(), name
    assert not generate(rows=ROWS, seed=8).equals(base)


def test_columns_dtypes_and_ranges(base):
    assert list(base.columns) == list(gen.COLUMNS)
    assert len(base) == ROWS
    assert base.customer_id.dtype == np.int64
    assert str(base.event_timestamp.dtype) == "datetime64[ns, UTC]"
    for name in ("tenure_months", "support_calls", "churned"):
        assert base[name].dtype == np.int64, name
    assert base.tenure_months.between(0, 72).all()
    assert base.support_calls.between(0, 10).all()
    assert base.monthly_charges.dropna().between(18, 120).all()
    assert (base.data_usage_gb >= 0).all()
    assert set(base.churned) == {0, 1}
    assert set(base.contract) == set(gen.CONTRACTS)
    assert set(base.plan) == set(gen.PLANS)
    assert set(base.region) == set(gen.REGIONS)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    assert base.event_timestamp.min() >= start
    assert base.event_timestamp.max() < start + pd.Timedelta(days=180)
    # Feast joins on (customer_id, event_timestamp): each pair must name one observation.
    assert not base.duplicated(["customer_id", "event_timestamp"]).any()
    assert base.event_timestamp.is_monotonic_increasing


def test_profile_is_stable_per_customer_and_tenure_grows(base):
    per_customer = base.groupby("customer_id")[["contract", "plan", "region"]].nunique()
    assert (per_customer == 1).all().all()
    tenure_steps = base.groupby("customer_id").tenure_months.diff().dropna()
    assert (tenure_steps >= 0).all()


def test_missing_fraction_and_base_rate(base):
    missing = base.monthly_charges.isna().mean()
    assert 0.0005 < missing < 0.005
    assert base.drop(columns="monthly_charges").notna().all().all()
    assert 0.2 <= base.churned.mean() <= 0.3


def test_label_follows_the_known_model(base):
    # The coefficients' signs show in the data: short tenure, many calls and monthly contracts churn more.
    by_contract = base.groupby("contract").churned.mean()
    assert by_contract["month-to-month"] > by_contract["one-year"] > by_contract["two-year"]
    assert base[base.support_calls >= 3].churned.mean() > base[base.support_calls == 0].churned.mean()
    assert base[base.tenure_months < 12].churned.mean() > base[base.tenure_months > 36].churned.mean()


def test_covariate_shift_moves_only_the_chosen_feature_after_the_drift_date(base):
    drifted = generate(rows=ROWS, drift=Drift(DRIFT_FROM, covariate={"monthly_charges": 1.5}))
    after = base.event_timestamp >= pd.Timestamp(DRIFT_FROM, tz="UTC")
    assert after.any() and (~after).any()
    pd.testing.assert_frame_equal(drifted[~after], base[~after])
    unchanged = [c for c in gen.COLUMNS if c not in ("monthly_charges", "churned")]
    pd.testing.assert_frame_equal(drifted.loc[after, unchanged], base.loc[after, unchanged])
    shift = drifted.loc[after, "monthly_charges"].mean() - base.loc[after, "monthly_charges"].mean()
    # 1.5 standard deviations, less what the 120 ceiling clips off.
    sd = base.monthly_charges.std()
    assert 1.0 * sd < shift <= 1.5 * sd
    # Missing values stay missing where they were.
    assert drifted.monthly_charges.isna().equals(base.monthly_charges.isna())


def test_label_shift_moves_the_rate_after_the_drift_date_only(base):
    drifted = generate(rows=ROWS, drift=Drift(DRIFT_FROM, label_shift=1.0))
    after = base.event_timestamp >= pd.Timestamp(DRIFT_FROM, tz="UTC")
    pd.testing.assert_frame_equal(drifted.drop(columns="churned"), base.drop(columns="churned"))
    assert drifted.loc[~after, "churned"].equals(base.loc[~after, "churned"])
    assert drifted.loc[after, "churned"].mean() > base.loc[after, "churned"].mean() + 0.1


def test_concept_drift_changes_the_relation_not_the_features(base):
    drifted = generate(rows=ROWS, drift=Drift(DRIFT_FROM, concept=1.0))
    after = base.event_timestamp >= pd.Timestamp(DRIFT_FROM, tz="UTC")
    pd.testing.assert_frame_equal(drifted.drop(columns="churned"), base.drop(columns="churned"))

    def calls_effect(frame: pd.DataFrame) -> float:
        rows = frame[after]
        return rows[rows.support_calls >= 3].churned.mean() - rows[rows.support_calls == 0].churned.mean()

    assert calls_effect(base) > 0.1
    assert calls_effect(drifted) < calls_effect(base) - 0.1


@pytest.mark.parametrize(("drift", "message"), [
    (lambda: Drift(DRIFT_FROM, covariate={"plan": 1.0}), "only numeric features"),
    (lambda: Drift(DRIFT_FROM, covariate={"income": 1.0}), "unknown feature 'income'"),
    (lambda: Drift("not a date"), "drift start 'not a date'"),
])
def test_bad_drift_is_refused_with_the_reason(drift, message):
    with pytest.raises(ValueError, match=message):
        drift()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rows": 0}, "rows must be at least 1"),
    ({"days": 0}, "days must be at least 1"),
    ({"rows": 100_000, "days": 1}, "do not fit"),
    ({"start": "someday"}, "start 'someday'"),
])
def test_bad_arguments_are_refused_with_the_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(**kwargs)


def test_cli_writes_the_files_and_names_them(tmp_path, capsys):
    out = tmp_path / "data"
    assert gen.main(["--out", str(out), "--rows", "500", "--drift-from", "2026-03-01",
                     "--shift", "data_usage_gb=2", "--label-shift", "0.5"]) == 0
    printed = capsys.readouterr().out
    for name in ("customers", "customer_profile", "customer_usage", "churn_labels"):
        assert str(out / f"{name}.parquet") in printed
    expected = generate(rows=500, drift=Drift("2026-03-01", {"data_usage_gb": 2.0}, label_shift=0.5))
    pd.testing.assert_frame_equal(pd.read_parquet(out / "customers.parquet"), expected)
    labels = pd.read_parquet(out / "churn_labels.parquet")
    assert list(labels.columns) == ["customer_id", "event_timestamp", "churned"]


def test_cli_refuses_a_drift_without_a_date(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gen.main(["--out", str(tmp_path), "--shift", "monthly_charges=1"])
    assert exit_info.value.code == 2
    assert "need --drift-from" in capsys.readouterr().err

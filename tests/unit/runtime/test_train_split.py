"""The time split: oldest rows train, newest test, nothing from the future in training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlcycle_runtime.train.split import sizes, time_split


def shuffled(rows: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 86400 * 30, rows), unit="s")
    return pd.DataFrame({"event_timestamp": ts, "x": rng.normal(size=rows)})


@pytest.mark.parametrize(("val", "test"), [(0.2, 0.1), (0.3, 0.0), (0.1, 0.4)])
def test_nothing_leaks_from_the_future(val, test):
    split = time_split(shuffled(1000), "event_timestamp", val, test)
    assert split.train["event_timestamp"].max() <= split.validation["event_timestamp"].min()
    if len(split.test):
        assert split.validation["event_timestamp"].max() <= split.test["event_timestamp"].min()
    assert sum(split.rows().values()) == 1000


def test_ties_on_the_boundary_stay_ordered():
    df = pd.DataFrame({"event_timestamp": pd.to_datetime(["2026-01-01"] * 10, utc=True), "x": range(10)})
    split = time_split(df, "event_timestamp", 0.2, 0.2)
    assert split.train["event_timestamp"].max() <= split.validation["event_timestamp"].min()
    assert list(split.train["x"]) == list(range(6))  # stable: ties keep their order


def test_sizes_follow_the_fractions():
    assert sizes(1000, 0.2, 0.1) == (700, 200, 100)
    assert sizes(10, 0.01, 0.0) == (9, 1, 0)  # validation is never empty


def test_the_split_is_by_time_not_by_position():
    df = shuffled(100)
    split = time_split(df, "event_timestamp", 0.2, 0.1)
    assert split.test["event_timestamp"].min() == df["event_timestamp"].nlargest(10).min()

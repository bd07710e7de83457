"""The time split: oldest rows train, then validation, newest test, so nothing is learnt from the future."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass
class Split:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame

    def rows(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def sizes(rows: int, validation_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """Rows per part (train, validation, test); validation gets at least one row, test none when asked for none."""
    test = round(rows * test_fraction)
    validation = max(1, round(rows * validation_fraction))
    return max(0, rows - validation - test), validation, test


def time_split(frame: pd.DataFrame, timestamp_column: str, validation_fraction: float,
               test_fraction: float) -> Split:
    """Sort by event time (stable, so ties keep their order) and cut by row counts."""
    ordered = frame.sort_values(timestamp_column, kind="stable").reset_index(drop=True)
    n_train, n_val, _ = sizes(len(ordered), validation_fraction, test_fraction)
    return Split(ordered.iloc[:n_train], ordered.iloc[n_train:n_train + n_val],
                 ordered.iloc[n_train + n_val:])

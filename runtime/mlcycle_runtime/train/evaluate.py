"""Offline evaluation: test metrics, baselines, gates, per-slice metrics and calibration."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.dummy import DummyClassifier, DummyRegressor

from mlcycle_runtime.config import Gates

BINARY = ("roc_auc", "pr_auc", "log_loss", "accuracy", "f1")
REGRESSION = ("rmse", "mae", "r2")
MULTICLASS = ("accuracy", "log_loss", "f1_macro")
CALIBRATION = ("brier", "ece")
MISSING_SLICE = "(missing)"
ECE_BINS = 10


def metric_names(task: str, calibration: bool = False) -> tuple[str, ...]:
    names = {"binary": BINARY, "regression": REGRESSION, "multiclass": MULTICLASS}[task]
    return names + CALIBRATION if calibration and task == "binary" else names


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over equal-width probability bins: the row-weighted gap between mean score and observed rate."""
    proba = np.clip(np.asarray(proba, dtype=np.float64), 0.0, 1.0)
    y_true = np.asarray(y_true, dtype=np.float64)
    idx = np.minimum((proba * bins).astype(int), bins - 1)
    counts = np.bincount(idx, minlength=bins)
    gap = np.abs(np.bincount(idx, weights=y_true, minlength=bins) - np.bincount(idx, weights=proba, minlength=bins))
    return float(gap.sum() / counts.sum()) if counts.sum() else math.nan


def _binary(y: np.ndarray, p: np.ndarray, calibration: bool) -> dict[str, float]:
    hard = (p >= 0.5).astype(int)
    two_classes = len(np.unique(y)) == 2
    out = {"accuracy": skm.accuracy_score(y, hard), "f1": skm.f1_score(y, hard, zero_division=0.0)}
    if two_classes:  # ranking metrics are undefined on one class (a small slice, say)
        out["roc_auc"] = skm.roc_auc_score(y, p)
        out["pr_auc"] = skm.average_precision_score(y, p)
    out["log_loss"] = skm.log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1])
    if calibration:
        out["brier"] = skm.brier_score_loss(y, p)
        out["ece"] = expected_calibration_error(y, p)
    return out


def compute(task: str, y_true: Any, scores: Any, calibration: bool = False) -> dict[str, float]:
    """The task's metrics for labels (class indices or values) and the model's scores, as plain floats."""
    y = np.asarray(y_true)
    p = np.asarray(scores, dtype=np.float64)
    if len(y) == 0:
        return {}
    if task == "binary":
        out = _binary(y.astype(int), p, calibration)
    elif task == "regression":
        out = {"rmse": math.sqrt(skm.mean_squared_error(y, p)), "mae": skm.mean_absolute_error(y, p)}
        if len(y) > 1:
            out["r2"] = skm.r2_score(y, p)
    else:
        k = p.shape[1]
        out = {"accuracy": skm.accuracy_score(y, p.argmax(1)),
               "f1_macro": skm.f1_score(y, p.argmax(1), average="macro", zero_division=0.0),
               "log_loss": skm.log_loss(y, np.clip(p, 1e-15, 1), labels=list(range(k)))}
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}


def baseline_scores(task: str, y_train: np.ndarray, rows: int, kind: str, seed: int = 0,
                    n_classes: int = 2) -> np.ndarray:
    """Scores of a baseline on `rows` test rows: zeroRule (majority class / mean) or random (stratified)."""
    dummy_x = np.zeros((len(y_train), 1))
    test_x = np.zeros((rows, 1))
    if task == "regression":
        if kind == "zeroRule":
            return DummyRegressor(strategy="mean").fit(dummy_x, y_train).predict(test_x)
        return np.random.default_rng(seed).choice(np.asarray(y_train, dtype=np.float64), size=rows)
    strategy = "prior" if kind == "zeroRule" else "stratified"
    model = DummyClassifier(strategy=strategy, random_state=seed).fit(dummy_x, y_train)
    proba = np.zeros((rows, n_classes))
    proba[:, model.classes_.astype(int)] = model.predict_proba(test_x)
    return proba[:, 1] if task == "binary" else proba


def lift(value: float, reference: float, mode: str) -> float:
    """How much better `value` is than `reference` in the job's direction (positive = better)."""
    return value - reference if mode == "max" else reference - value


def gates(spec: Gates, metric: str, mode: str, metrics: dict[str, float],
          baselines: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """[{name, threshold, value, passed}] for every configured gate; a value that cannot be measured fails."""
    out: list[dict[str, Any]] = []
    value = metrics.get(metric)

    def add(name: str, threshold: float, measured: float | None, ok: Callable[[float], bool]) -> None:
        passed = measured is not None and ok(measured)
        out.append({"name": name, "threshold": float(threshold),
                    "value": None if measured is None else round(float(measured), 6), "passed": bool(passed)})

    if spec.min_metric is not None:
        threshold = spec.min_metric
        add("minMetric", threshold, value, lambda v: v >= threshold if mode == "max" else v <= threshold)
    champion = baselines.get("champion")
    if spec.min_lift_over_champion is not None and champion is not None:
        ref = champion.get(metric)
        measured = lift(value, ref, mode) if value is not None and ref is not None else None
        add("minLiftOverChampion", spec.min_lift_over_champion, measured,
            lambda v: v >= spec.min_lift_over_champion)
    zero = baselines.get("zeroRule")
    if spec.min_lift_over_baseline is not None and zero is not None:
        ref = zero.get(metric)
        measured = lift(value, ref, mode) if value is not None and ref is not None else None
        add("minLiftOverBaseline", spec.min_lift_over_baseline, measured,
            lambda v: v >= spec.min_lift_over_baseline)
    return out


def _slice_keys(col: pd.Series, max_values: int = 20) -> pd.Series:
    """The slice each row falls in: its value, or a quartile range for a numeric column with many values."""
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype) \
            and col.nunique() > max_values:
        bins = pd.qcut(col, 4, duplicates="drop")
        return bins.astype(str).where(col.notna(), MISSING_SLICE)
    return col.map(lambda v: MISSING_SLICE if v is None or v != v else str(v))


def slices(frame: pd.DataFrame, columns: list[str], task: str, y_true: np.ndarray,
           scores: np.ndarray) -> list[dict[str, Any]]:
    """Metrics on the test rows of each value of each slice column, values in sorted order."""
    out = []
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    for column in columns:
        keys = _slice_keys(frame[column].reset_index(drop=True))
        for value in sorted(keys.unique()):
            mask = (keys == value).to_numpy()
            out.append({"column": column, "value": value, "rows": int(mask.sum()),
                        "metrics": compute(task, y_true[mask], scores[mask])})
    return out

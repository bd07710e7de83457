"""Data validation before anything trains: every violation found, each as one readable line."""

from __future__ import annotations

import pandas as pd

from mlcycle_runtime.config import ColumnRule, TrainConfig

EXAMPLES = 3


def _examples(values: pd.Series) -> str:
    shown = [repr(v) if isinstance(v, str) else _num(v) for v in pd.unique(values)[:EXAMPLES]]
    return f" (e.g. {', '.join(shown)})" if shown else ""


def _num(v: object) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v.item() if hasattr(v, "item") else v)


def _limit(v: float) -> str:
    return _num(float(v))


def _type_problem(col: pd.Series, expected: str) -> str | None:
    """Why a column is not of the expected type, or None when it is."""
    dtype = col.dtype
    numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
    if expected == "int":
        if pd.api.types.is_integer_dtype(dtype) and numeric:
            return None
        if pd.api.types.is_float_dtype(dtype):
            # Parquet ints with nulls arrive as floats: integral values are still ints.
            present = col.dropna()
            fractional = present[present != present.round()]
            if fractional.empty:
                return None
            return f"expected int, got {len(fractional)} non-integer values{_examples(fractional)}"
        return f"expected int, got {dtype}"
    if expected == "float":
        return None if numeric else f"expected float, got {dtype}"
    if expected == "bool":
        return None if pd.api.types.is_bool_dtype(dtype) else f"expected bool, got {dtype}"
    if expected == "timestamp":
        return None if pd.api.types.is_datetime64_any_dtype(dtype) else f"expected timestamp, got {dtype}"
    # string: text or categorical columns
    if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype):
        others = col.dropna()
        others = others[~others.map(lambda v: isinstance(v, str))]
        if others.empty:
            return None
        return f"expected string, got {len(others)} non-string values{_examples(others.astype(str))}"
    return f"expected string, got {dtype}"


def check_column(col: pd.Series, rule: ColumnRule) -> list[str]:
    """Violations of one column rule (type, missing share, range, allowed values)."""
    out = []
    name = rule.name
    if rule.type is not None and (problem := _type_problem(col, rule.type)):
        out.append(f"{name}: {problem}")
    n = len(col)
    missing = int(col.isna().sum())
    if n and missing / n > rule.max_missing_fraction:
        out.append(f"{name}: {missing / n:.2%} missing ({missing} of {n}), above maxMissingFraction "
                   f"{rule.max_missing_fraction:.2%}")
    if rule.min is not None or rule.max is not None:
        if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
            present = col.dropna()
            if rule.min is not None and (low := present[present < rule.min]).size:
                out.append(f"{name}: {low.size} values below min {_limit(rule.min)}{_examples(low)}")
            if rule.max is not None and (high := present[present > rule.max]).size:
                out.append(f"{name}: {high.size} values above max {_limit(rule.max)}{_examples(high)}")
        else:
            out.append(f"{name}: min/max need a numeric column, got {col.dtype}")
    if rule.allowed_values:
        present = col.dropna()
        bad = present[~present.astype(str).isin(set(rule.allowed_values))]
        if bad.size:
            out.append(f"{name}: {bad.size} values not in allowedValues [{', '.join(rule.allowed_values)}]"
                       f"{_examples(bad.astype(str))}")
    return out


def violations(frame: pd.DataFrame, config: TrainConfig, features: list[str], train_rows: int) -> list[str]:
    """Every way the frame breaks the job's rules; empty when it may be trained on."""
    spec = config.spec
    data, rules = spec.data, spec.validation
    out: list[str] = []
    label, ts = data.label_column, data.source.timestamp_column
    if label not in frame.columns:
        out.append(f"{label}: label column missing")
    else:
        if nulls := int(frame[label].isna().sum()):
            out.append(f"{label}: {nulls} rows without a label")
        if spec.model.task in ("binary", "multiclass"):
            classes = pd.unique(frame[label].dropna())
            if spec.model.task == "binary" and len(classes) != 2:
                out.append(f"{label}: a binary task needs exactly 2 label values, found {len(classes)}"
                           f"{_examples(pd.Series(classes))}")
            elif spec.model.task == "multiclass" and len(classes) < 2:
                out.append(f"{label}: a multiclass task needs at least 2 label values, found {len(classes)}")
        elif not pd.api.types.is_numeric_dtype(frame[label].dtype) or pd.api.types.is_bool_dtype(frame[label]):
            out.append(f"{label}: a regression label must be numeric, got {frame[label].dtype}")
    if ts not in frame.columns:
        out.append(f"{ts}: timestamp column missing (the split needs it)")
    else:
        col = frame[ts]
        if not pd.api.types.is_datetime64_any_dtype(col.dtype):
            out.append(f"{ts}: expected timestamps for the time split, got {col.dtype}")
        elif nulls := int(col.isna().sum()):
            out.append(f"{ts}: {nulls} rows without a timestamp")
    for column in data.source.entity_columns:
        if column not in frame.columns:
            out.append(f"{column}: entity column missing")
    for column in features:
        if column not in frame.columns:
            out.append(f"{column}: feature column missing")
    ruled = set()
    for rule in rules.columns:
        ruled.add(rule.name)
        if rule.name not in frame.columns:
            if rule.name not in features:  # a missing feature is already listed above
                out.append(f"{rule.name}: column missing")
            continue
        out.extend(check_column(frame[rule.name], rule))
    if not rules.allow_extra_columns:
        exempt = {label, ts, *data.source.entity_columns}
        out.extend(f"{c}: column has no rule and allowExtraColumns is false"
                   for c in frame.columns if c not in ruled and c not in exempt)
    if train_rows < rules.min_rows:
        out.append(f"rows: {train_rows} training rows after the split (of {len(frame)}), fewer than minRows "
                   f"{rules.min_rows}")
    return out

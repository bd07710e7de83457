"""The feature schema applied to Arrow record batches: the same per-record problems and the same float32 matrix as
the model server's `FeatureSchema.problems` and `encode_records` give for those rows as JSON, computed per column.

Scoring a million rows through Python dicts would cost more than the prediction; an Arrow column has one type, so
each check is one vectorised pass, and a row's reasons read as the server's 4xx would name them (`plan: expected a
category (string), got float`), in schema order.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlcycle_runtime.schema import FLOAT32_MAX, Feature, FeatureSchema


def python_type_name(arrow_type: pa.DataType) -> str:
    """The name of the Python type a value of this Arrow type becomes (what the server's messages name)."""
    t = arrow_type
    if pa.types.is_dictionary(t):
        return python_type_name(t.value_type)
    checks = ((pa.types.is_boolean, "bool"), (pa.types.is_integer, "int"), (pa.types.is_floating, "float"),
              (pa.types.is_string, "str"), (pa.types.is_large_string, "str"), (pa.types.is_binary, "bytes"),
              (pa.types.is_large_binary, "bytes"), (pa.types.is_timestamp, "datetime"), (pa.types.is_date, "date"),
              (pa.types.is_time, "time"), (pa.types.is_duration, "timedelta"), (pa.types.is_decimal, "Decimal"),
              (pa.types.is_struct, "dict"), (pa.types.is_null, "NoneType"))
    for check, name in checks:
        if check(t):
            return name
    return "list"


def _plain(column: pa.Array) -> pa.Array:
    return column.dictionary_decode() if pa.types.is_dictionary(column.type) else column


def _numeric_ok(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t)


def _category_ok(t: pa.DataType) -> bool:
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)
            or pa.types.is_boolean(t) or pa.types.is_null(t))


def missing_columns(schema: FeatureSchema, names: list[str]) -> list[str]:
    present = set(names)
    return [f.name for f in schema.features if f.name not in present]


def _feature_problems(feature: Feature, column: pa.Array) -> list[tuple[np.ndarray, str]]:
    """(rows, message) pairs for one feature's column; a value of null is never a problem (it is missing)."""
    column = _plain(column)
    t = column.type
    present = column.is_valid().to_numpy(zero_copy_only=False)
    if feature.kind == "numeric":
        if not _numeric_ok(t):
            return [(present, f"{feature.name}: expected a number, got {python_type_name(t)}")]
        if not pa.types.is_floating(t):
            return []  # an int64 cannot reach float32's range
        values = column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        finite = np.isfinite(values)
        return [(present & ~finite, f"{feature.name}: must be finite"),
                (present & finite & (np.abs(values) > FLOAT32_MAX),
                 f"{feature.name}: out of range: beyond ±{FLOAT32_MAX:.4g}, which the model's float32 holds")]
    if not _category_ok(t):
        return [(present, f"{feature.name}: expected a category (string), got {python_type_name(t)}")]
    return []


def problems(schema: FeatureSchema, batch: pa.RecordBatch) -> list[str | None]:
    """Per row, why the model cannot score it ("; "-joined, in schema order), or None when it can."""
    found: dict[int, list[str]] = {}
    for feature in schema.features:
        for rows, message in _feature_problems(feature, batch.column(feature.name)):
            for i in np.flatnonzero(rows).tolist():
                found.setdefault(i, []).append(message)
    return [("; ".join(found[i]) if i in found else None) for i in range(batch.num_rows)]


def _category_codes(feature: Feature, column: pa.Array) -> np.ndarray:
    column = _plain(column)
    if pa.types.is_null(column.type):
        return np.full(len(column), np.nan)
    if pa.types.is_boolean(column.type):  # the server encodes str(True): "True", where Arrow's cast says "true"
        column = pc.if_else(column, "True", "False")
    elif not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = pc.cast(column, pa.string())
    codes = pc.index_in(column, value_set=pa.array(feature.categories, type=column.type))
    return pc.cast(codes, pa.float64()).to_numpy(zero_copy_only=False)


def encode(schema: FeatureSchema, batch: pa.RecordBatch) -> np.ndarray:
    """Rows without problems → the float32 matrix `FeatureSchema.encode_records` gives for them: nulls and unseen
    categories are NaN."""
    out = np.empty((batch.num_rows, len(schema.features)), dtype=np.float32)
    for j, feature in enumerate(schema.features):
        column = batch.column(feature.name)
        if feature.kind == "numeric":
            column = _plain(column)
            out[:, j] = (np.full(len(column), np.nan) if pa.types.is_null(column.type)
                         else pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False))
        else:
            out[:, j] = _category_codes(feature, column)
    return out


def missing_value_reasons(schema: FeatureSchema, batch: pa.RecordBatch, matrix: np.ndarray) -> list[str | None]:
    """For a learner that cannot take NaN: per row, its nulls and unseen categories, as the server's 422 names them."""
    reasons: list[str | None] = []
    valid = {f.name: batch.column(f.name).is_valid().to_numpy(zero_copy_only=False) for f in schema.features}
    for i, row in enumerate(np.isnan(matrix)):
        named = [f"{f.name}: {'unseen category' if valid[f.name][i] else 'null'}"
                 for j, f in enumerate(schema.features) if row[j]]
        reasons.append("; ".join(named) if named else None)
    return reasons

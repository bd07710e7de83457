"""A model's feature schema: what a request must carry, and how records become the learner's matrix.

The trainer writes the schema into the model card; the server validates requests with it (a 4xx naming every
bad field, never a 5xx) and encodes them with the same code, so training and serving cannot disagree.
Categorical values are encoded as their index in the schema's category list; an unseen category or a null
becomes NaN, which the tree learners treat as missing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Kind = Literal["numeric", "categorical"]

# The largest magnitude a feature value may have: features are encoded as float32 for the model.
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Feature:
    name: str
    kind: Kind
    categories: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "categorical":
            out["categories"] = list(self.categories)
        return out


@dataclass(frozen=True)
class FeatureSchema:
    features: tuple[Feature, ...]
    _codes: dict[str, dict[str, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        codes = {f.name: {c: i for i, c in enumerate(f.categories)} for f in self.features if f.kind == "categorical"}
        object.__setattr__(self, "_codes", codes)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def to_json(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in self.features]

    @classmethod
    def from_json(cls, data: Sequence[Mapping[str, Any]]) -> FeatureSchema:
        return cls(tuple(Feature(d["name"], d["kind"], tuple(d.get("categories", ()))) for d in data))

    @classmethod
    def infer(cls, frame: Any, columns: Iterable[str]) -> FeatureSchema:
        """Numeric columns stay numeric; anything else is categorical with the categories seen, sorted."""
        import pandas as pd

        features = []
        for name in columns:
            col = frame[name]
            if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
                features.append(Feature(name, "numeric"))
            else:
                cats = sorted(str(v) for v in col.dropna().unique())
                features.append(Feature(name, "categorical", tuple(cats)))
        return cls(tuple(features))

    def problems(self, record: Any) -> list[str]:
        """Every reason a request record cannot be scored, one phrase per field; empty when it can."""
        if not isinstance(record, Mapping):
            return [f"a record must be a JSON object, got {type(record).__name__}"]
        out = []
        for f in self.features:
            if f.name not in record:
                out.append(f"{f.name}: missing")
                continue
            value = record[f.name]
            if value is None:
                continue
            if f.kind == "numeric":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    out.append(f"{f.name}: expected a number, got {type(value).__name__}")
                elif isinstance(value, float) and not math.isfinite(value):
                    out.append(f"{f.name}: must be finite")
                elif abs(value) > FLOAT32_MAX:  # an int compares exactly, whatever its size (float() would overflow)
                    out.append(f"{f.name}: out of range: beyond ±{FLOAT32_MAX:.4g}, which the model's float32 holds")
            elif not isinstance(value, str | int | bool):
                out.append(f"{f.name}: expected a category (string), got {type(value).__name__}")
        return out

    def encode_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Validated records → float32 matrix [rows, features] in schema order."""
        out = np.empty((len(records), len(self.features)), dtype=np.float32)
        for j, f in enumerate(self.features):
            if f.kind == "numeric":
                col = [r[f.name] for r in records]
                out[:, j] = [np.nan if v is None else v for v in col]
            else:
                codes = self._codes[f.name]
                out[:, j] = [codes.get(str(r[f.name]), np.nan) if r[f.name] is not None else np.nan
                             for r in records]
        return out

    def encode_frame(self, frame: Any) -> np.ndarray:
        """A pandas DataFrame with the schema's columns → float32 matrix, as encode_records would give."""
        out = np.empty((len(frame), len(self.features)), dtype=np.float32)
        for j, f in enumerate(self.features):
            col = frame[f.name]
            if f.kind == "numeric":
                out[:, j] = col.to_numpy(dtype=np.float64, na_value=np.nan)
            else:
                codes = self._codes[f.name]
                out[:, j] = col.map(lambda v, codes=codes: codes.get(str(v), np.nan) if v is not None
                                    and v == v else np.nan).to_numpy(dtype=np.float64)
        return out

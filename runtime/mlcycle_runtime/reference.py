"""Reference histograms: the training data's distribution per feature and of the predictions.

The trainer computes them once (`build`) and stores them beside the model (`reference.json`); the router bins
each live request with the same edges (`bin_value`) into Prometheus counters, and the drift monitor compares the
two histograms. Histograms are mergeable, so drift is computed at any traffic level without keeping rows.

Binning: a numeric value v falls in bin `searchsorted(edges, v, side="right")`, so bin i holds
edges[i-1] <= v < edges[i] and there are len(edges) + 1 bins; a categorical value falls in the index of its
category, an unseen one in the last bin (len(categories)); a null counts as `missing`, in no bin.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlcycle_runtime.schema import FeatureSchema, Kind

DEFAULT_BINS = 10
MISSING = "missing"
# The feature label under which the router and the monitor keep the histogram of predictions.
PREDICTION = "prediction"


@dataclass
class Histogram:
    kind: Kind
    counts: list[int]
    edges: list[float] | None = None
    categories: list[str] | None = None
    missing: int = 0

    @property
    def bins(self) -> int:
        return len(self.counts)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "counts": self.counts, "missing": self.missing}
        if self.kind == "numeric":
            out["edges"] = self.edges
        else:
            out["categories"] = self.categories
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Histogram:
        return cls(kind=data["kind"], counts=list(data["counts"]), edges=data.get("edges"),
                   categories=data.get("categories"), missing=int(data.get("missing", 0)))


def quantile_edges(values: np.ndarray, bins: int = DEFAULT_BINS) -> list[float]:
    """Inner edges at the reference's quantiles (duplicates dropped, so a spike is one bin, not several)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return []
    qs = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1])
    return [float(e) for e in np.unique(qs)]


def bin_numeric(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Bin index per value; -1 for NaN (missing)."""
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")
    return np.where(np.isnan(values), -1, idx)


def bin_categorical(values: Any, categories: list[str]) -> np.ndarray:
    """Bin index per value (its category's index, len(categories) when unseen); -1 for null."""
    codes = {c: i for i, c in enumerate(categories)}
    other = len(categories)
    return np.array([-1 if v is None or v != v else codes.get(str(v), other) for v in values], dtype=np.int64)


def histogram_numeric(values: np.ndarray, edges: list[float]) -> Histogram:
    idx = bin_numeric(np.asarray(values, dtype=np.float64), edges)
    counts = np.bincount(idx[idx >= 0], minlength=len(edges) + 1)
    return Histogram("numeric", [int(c) for c in counts], edges=list(edges), missing=int((idx < 0).sum()))


def histogram_categorical(values: Any, categories: list[str]) -> Histogram:
    idx = bin_categorical(values, categories)
    counts = np.bincount(idx[idx >= 0], minlength=len(categories) + 1)
    return Histogram("categorical", [int(c) for c in counts], categories=list(categories),
                     missing=int((idx < 0).sum()))


@dataclass
class Reference:
    rows: int
    features: dict[str, Histogram]
    prediction: Histogram | None = None

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "features": {k: h.to_json() for k, h in self.features.items()},
                "prediction": self.prediction.to_json() if self.prediction else None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reference:
        pred = data.get("prediction")
        return cls(rows=int(data["rows"]),
                   features={k: Histogram.from_json(v) for k, v in data["features"].items()},
                   prediction=Histogram.from_json(pred) if pred else None)

    def histogram(self, feature: str) -> Histogram:
        return self.prediction if feature == PREDICTION and self.prediction else self.features[feature]


def build(frame: Any, schema: FeatureSchema, predictions: np.ndarray | None = None,
          bins: int = DEFAULT_BINS) -> Reference:
    """Reference histograms of a training frame (pandas) and of the model's scores on it."""
    features = {}
    for f in schema.features:
        if f.kind == "numeric":
            values = frame[f.name].to_numpy(dtype=np.float64, na_value=np.nan)
            features[f.name] = histogram_numeric(values, quantile_edges(values, bins))
        else:
            features[f.name] = histogram_categorical(frame[f.name].tolist(), list(f.categories))
    prediction = None
    if predictions is not None:
        scores = np.asarray(predictions, dtype=np.float64)
        prediction = histogram_numeric(scores, quantile_edges(scores, bins))
    return Reference(rows=len(frame), features=features, prediction=prediction)


def bin_value(histogram: Histogram, value: Any) -> str:
    """The bin label of one live value (the router's hot path: no numpy for a scalar)."""
    if value is None:
        return MISSING
    if histogram.kind == "numeric":
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            return MISSING
        return str(bisect.bisect_right(histogram.edges or [], value))
    categories = histogram.categories or []
    try:
        return str(categories.index(str(value)))
    except ValueError:
        return str(len(categories))

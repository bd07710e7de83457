"""Training data: read the entity source (Parquet), join features point-in-time through Feast, fingerprint it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlcycle_runtime import storage
from mlcycle_runtime.config import TrainConfig


class DataError(Exception):
    """Data that cannot be read or joined; the message names the file or the problem in one line."""


@dataclass
class Loaded:
    frame: pd.DataFrame
    features: list[str]
    feature_refs: list[str]
    fingerprint: str


def read_parquet(uri: str) -> pd.DataFrame:
    """A Parquet file or directory at a storage URI (plain path, file://, pvc://, s3:// through fsspec)."""
    import fsspec
    import pyarrow.parquet as pq

    url = storage.resolve(uri)
    try:
        fs, path = fsspec.core.url_to_fs(url)
        if not fs.exists(path):
            raise DataError(f"data source {uri} does not exist")
        table = pq.read_table(path, filesystem=fs)
    except DataError:
        raise
    except Exception as err:  # pyarrow raises several types for a corrupt file; all mean the same to the user
        reason = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"data source {uri} is not readable Parquet: {reason}") from None
    frame = table.to_pandas()
    if frame.empty:
        raise DataError(f"data source {uri} holds no rows")
    return frame


def fingerprint(frame: pd.DataFrame) -> str:
    """sha256 over the data: column names, dtypes and row hashes; independent of column and row order."""
    columns = sorted(frame.columns)
    digest = hashlib.sha256()
    digest.update(repr([(c, str(frame[c].dtype)) for c in columns]).encode())
    # Row order is not part of the data: a directory of Parquet files may be listed in any order.
    rows = pd.util.hash_pandas_object(frame[columns], index=False).to_numpy()
    digest.update(np.sort(rows).tobytes())
    return "sha256:" + digest.hexdigest()


def feature_columns(frame: pd.DataFrame, config: TrainConfig) -> list[str]:
    """spec.data.features when given (the part after `view:`), else every column but label, time and entities."""
    data = config.spec.data
    if data.features:
        return [ref.rsplit(":", 1)[-1] for ref in data.features]
    excluded = {data.label_column, data.source.timestamp_column, *data.source.entity_columns}
    return [c for c in frame.columns if c not in excluded]


def _repo(config: TrainConfig) -> str:
    return config.feature_store.repo_path if config.feature_store else "/etc/feast"


def service_refs(repo: str, feature_service: str) -> list[str]:
    """The service's features as `view:feature` (the lineage's featureRefs); a Feast error becomes a DataError."""
    from mlcycle_runtime.features import feature_service_refs

    try:
        return feature_service_refs(repo, feature_service)
    except Exception as err:
        reason = " ".join(str(err).split())[:500] or type(err).__name__
        raise DataError(f"feature service {feature_service} in {repo}: {reason}") from None


def _join_features(entities: pd.DataFrame, config: TrainConfig) -> pd.DataFrame:
    data = config.spec.data
    try:
        from mlcycle_runtime.features import historical_features
    except ImportError as err:
        raise DataError(f"the feature store helpers are not available: {err}") from None
    repo = _repo(config)
    frame = entities.copy()
    ts = data.source.timestamp_column
    if ts != "event_timestamp" and ts in frame:
        # Feast's point-in-time join reads the entity frame's event time from this column.
        frame = frame.rename(columns={ts: "event_timestamp"})
    try:
        joined = historical_features(repo, frame, feature_service=data.feature_service, features=tuple(data.features))
    except Exception as err:
        reason = " ".join(str(err).split())[:500] or type(err).__name__
        raise DataError(f"feature join from {repo} failed: {reason}") from None
    if ts != "event_timestamp":
        joined = joined.rename(columns={"event_timestamp": ts})
    return joined


def load(config: TrainConfig) -> Loaded:
    """The frame to validate and train on, with its feature columns, feature refs and fingerprint."""
    data = config.spec.data
    frame = read_parquet(data.source.uri)
    uses_store = bool(data.feature_service or data.features) and config.feature_store is not None
    if uses_store:
        keys = [*data.source.entity_columns, data.source.timestamp_column, data.label_column]
        missing = [k for k in keys if k not in frame.columns]
        if missing:
            raise DataError(f"data source {data.source.uri} lacks the entity columns {', '.join(missing)}")
        entities = frame[keys]
        frame = _join_features(entities, config)
        refs = service_refs(_repo(config), data.feature_service) if data.feature_service else list(data.features)
        features = [c for c in frame.columns if c not in keys] if not data.features else feature_columns(frame, config)
    else:
        features = feature_columns(frame, config)
        refs = list(data.features) or list(features)
    return Loaded(frame.reset_index(drop=True), features, refs, fingerprint(frame))


def label_classes(values: Any) -> list[Any]:
    """The label's classes in a stable order (sorted), as plain Python values for the model card."""
    uniq = pd.unique(pd.Series(values).dropna())
    return sorted(v.item() if hasattr(v, "item") else v for v in uniq)

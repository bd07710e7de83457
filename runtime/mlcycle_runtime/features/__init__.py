"""Feast for the runtime: point-in-time training data, online lookups for serving, and the apply/materialize
commands (`python -m mlcycle_runtime.features`)."""

from .store import (
    CONFIG_FILE,
    DATA_ENV,
    EntityKeyError,
    FeatureStoreError,
    apply,
    feature_service_refs,
    historical_features,
    materialize,
    online_features,
    online_values,
    open_store,
    serving_store,
)

__all__ = [
    "CONFIG_FILE",
    "DATA_ENV",
    "EntityKeyError",
    "FeatureStoreError",
    "apply",
    "feature_service_refs",
    "historical_features",
    "materialize",
    "online_features",
    "online_values",
    "open_store",
    "serving_store",
]

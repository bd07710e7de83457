"""Feast for the runtime: point-in-time training data, online lookups for serving, and the apply/materialize
commands (`python -m mlcycle_runtime.features`)."""

from .store import (
    CONFIG_FILE,
    DATA_ENV,
    FeatureStoreError,
    apply,
    feature_service_refs,
    historical_features,
    materialize,
    online_features,
    open_store,
)

__all__ = [
    "CONFIG_FILE",
    "DATA_ENV",
    "FeatureStoreError",
    "apply",
    "feature_service_refs",
    "historical_features",
    "materialize",
    "online_features",
    "open_store",
]

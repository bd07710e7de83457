"""Feast definitions of the churn example: the customer entity, its profile and usage views, and the service
the trainer and the server ask for.

The Parquet files are written by `python -m examples.churn.generate`. Their directory differs per machine (a
checkout, a volume in a pod), so it comes from MLCYCLE_FEAST_DATA, defaulting to `data/` beside this file. The
paths are made absolute when the definitions are applied, because the registry keeps them and whoever reads
the registry later (a materialization pod whose repo is /etc/feast) must find the same files.
"""

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64, String

DATA = Path(os.environ.get("MLCYCLE_FEAST_DATA") or Path(__file__).parent / "data").resolve()

customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.INT64, description="A subscriber.")

profile_source = FileSource(
    name="customer_profile_source",
    path=str(DATA / "customer_profile.parquet"),
    timestamp_field="event_timestamp",
)
usage_source = FileSource(
    name="customer_usage_source",
    path=str(DATA / "customer_usage.parquet"),
    timestamp_field="event_timestamp",
)

# A profile changes rarely (contract and plan changes, tenure by the month): a year-old value still holds.
customer_profile = FeatureView(
    name="customer_profile",
    entities=[customer],
    ttl=timedelta(days=365),
    schema=[
        Field(name="tenure_months", dtype=Int64),
        Field(name="contract", dtype=String),
        Field(name="plan", dtype=String),
        Field(name="region", dtype=String),
    ],
    source=profile_source,
    online=True,
)

# Usage is a monthly-ish snapshot; after a quarter without a new one it says nothing about the customer now.
customer_usage = FeatureView(
    name="customer_usage",
    entities=[customer],
    ttl=timedelta(days=90),
    schema=[
        Field(name="monthly_charges", dtype=Float64),
        Field(name="support_calls", dtype=Int64),
        Field(name="data_usage_gb", dtype=Float64),
    ],
    source=usage_source,
    online=True,
)

churn_features = FeatureService(name="churn_features", features=[customer_profile, customer_usage])

"""Deterministic churn data for the worked example: subscribers observed over time, with a known label model.

Each row is one observation of a customer at `event_timestamp`: the profile and usage as of then, and whether
the customer churned afterwards (`churned`, drawn from a logistic model with the coefficients below). The same
arguments give the same rows, and `write` the same Parquet bytes. A `Drift` changes the data from a date on:
covariate shift (features move, the label model stays), label shift (the base rate moves) or concept drift
(the relation between features and label changes), so the monitor and the retraining loop have something real
to find.

    python -m examples.churn.generate --out /tmp/churn --rows 20000 --drift-from 2026-05-01 --shift monthly_charges=1.5
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

CONTRACTS = ("month-to-month", "one-year", "two-year")
PLANS = ("basic", "standard", "premium")
REGIONS = ("north", "south", "east", "west")
NUMERIC = ("tenure_months", "monthly_charges", "support_calls", "data_usage_gb")
CATEGORICAL = ("contract", "plan", "region")
PROFILE = ("tenure_months", "contract", "plan", "region")
USAGE = ("monthly_charges", "support_calls", "data_usage_gb")
COLUMNS = ("customer_id", "event_timestamp", *NUMERIC, *CATEGORICAL, "churned")
MISSING_CHARGES = 0.002
CUSTOMER_ID_BASE = 100_000

# The label model, in log-odds. INTERCEPT puts the base rate near 25% on the default data.
INTERCEPT = -0.85
COEF = {"tenure_months": -0.045, "monthly_charges": 0.03, "support_calls": 0.45, "data_usage_gb": -0.04}
CENTER = {"tenure_months": 0.0, "monthly_charges": 65.0, "support_calls": 0.0, "data_usage_gb": 10.0}
CONTRACT_EFFECT = {"month-to-month": 0.9, "one-year": -0.4, "two-year": -1.4}
PLAN_EFFECT = {"basic": 0.25, "standard": 0.0, "premium": -0.2}
REGION_EFFECT = {"north": 0.0, "south": 0.15, "east": -0.1, "west": 0.05}
# Concept drift adds `concept` times this term: long tenure and many calls stop meaning what they meant.
CONCEPT_COEF = {"tenure_months": 0.09, "support_calls": -0.9}
CONCEPT_CENTER = {"tenure_months": 24.0, "support_calls": 1.2}

# Valid ranges, kept after drift too (a shift moves a distribution, it does not invent impossible values).
LIMITS = {"tenure_months": (0, 72), "monthly_charges": (18.0, 120.0), "support_calls": (0, 10),
          "data_usage_gb": (0.0, None)}
INTEGER = ("tenure_months", "support_calls")


@dataclass
class Drift:
    """A change of the data from `start` (a date or timestamp, UTC) on.

    `covariate` maps a numeric feature to its shift in standard deviations; `label_shift` is added to the churn
    log-odds; `concept` is the strength of a changed relation between features and label (0: none, 1: the
    effects of tenure and support calls are reversed).
    """

    start: str
    covariate: dict[str, float] = field(default_factory=dict)
    label_shift: float = 0.0
    concept: float = 0.0

    def __post_init__(self) -> None:
        for name in self.covariate:
            if name in CATEGORICAL:
                raise ValueError(f"covariate shift of {name!r}: only numeric features can be shifted "
                                 f"({', '.join(NUMERIC)})")
            if name not in NUMERIC:
                raise ValueError(f"covariate shift of unknown feature {name!r}; numeric features: {', '.join(NUMERIC)}")
        _utc(self.start, "drift start")


def _utc(value: str, what: str) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(value)
    except ValueError as err:
        raise ValueError(f"{what} {value!r} is not a date or timestamp: {err}") from None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def generate(rows: int = 20_000, start: str = "2026-01-01", days: int = 180, seed: int = 7,
             drift: Drift | None = None) -> pd.DataFrame:
    """Observations of about rows/4 customers spread evenly over `days` from `start`, one column per feature."""
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    step = days * 86_400 / rows
    if step < 1:
        raise ValueError(f"{rows} rows do not fit in {days} days at one observation per second")
    origin = _utc(start, "start")
    rng = np.random.default_rng(seed)
    n_customers = max(1, rows // 4)

    # Every random draw happens here, in a fixed order, so a Drift changes values but never the random stream:
    # the same seed with and without drift gives the same customers, times and noise.
    region = rng.choice(len(REGIONS), n_customers, p=[0.3, 0.25, 0.25, 0.2])
    contract = rng.choice(len(CONTRACTS), n_customers, p=[0.5, 0.3, 0.2])
    plan = rng.choice(len(PLANS), n_customers, p=[0.4, 0.4, 0.2])
    tenure_scale = np.array([8.0, 15.0, 22.0])[contract]
    tenure0 = rng.gamma(2.0, tenure_scale)
    charges_base = np.array([30.0, 65.0, 95.0])[plan] + rng.normal(0.0, 8.0, n_customers)
    call_rate = rng.gamma(2.0, 0.6, n_customers)
    usage_log_mean = np.array([1.5, 2.3, 3.0])[plan]

    customer = rng.integers(0, n_customers, rows)
    # Distinct times (step >= 1 s): floor(i*step) plus a jitter below floor(step) never reaches the next slot.
    seconds = np.floor(np.arange(rows) * step).astype(np.int64) + rng.integers(0, int(step), rows)
    charges_noise = rng.normal(0.0, 4.0, rows)
    calls = rng.poisson(call_rate[customer])
    usage = rng.lognormal(usage_log_mean[customer], 0.5)
    label_draw = rng.random(rows)
    missing = rng.random(rows) < MISSING_CHARGES

    timestamps = origin + pd.to_timedelta(seconds, unit="s")
    months = seconds // (30 * 86_400)
    values = {
        "tenure_months": tenure0[customer] + months,
        "monthly_charges": charges_base[customer] + charges_noise,
        "support_calls": calls.astype(np.float64),
        "data_usage_gb": usage,
    }
    drifted = np.zeros(rows, dtype=bool)
    if drift is not None:
        drifted = np.asarray(timestamps >= _utc(drift.start, "drift start"))
        for name, shift in drift.covariate.items():
            values[name] = values[name] + drifted * shift * float(np.std(_clip(name, values[name])))
    values = {name: _clip(name, v) for name, v in values.items()}

    contract_names = np.array(CONTRACTS, dtype=object)[contract[customer]]
    plan_names = np.array(PLANS, dtype=object)[plan[customer]]
    region_names = np.array(REGIONS, dtype=object)[region[customer]]
    logit = INTERCEPT + sum(COEF[n] * (values[n] - CENTER[n]) for n in COEF)
    logit = logit + _lookup(CONTRACT_EFFECT, contract_names) + _lookup(PLAN_EFFECT, plan_names)
    logit = logit + _lookup(REGION_EFFECT, region_names)
    if drift is not None:
        concept = sum(CONCEPT_COEF[n] * (values[n] - CONCEPT_CENTER[n]) for n in CONCEPT_COEF)
        logit = logit + drifted * (drift.label_shift + drift.concept * concept)
    churned = (label_draw < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)

    charges = np.round(values["monthly_charges"], 2)
    charges[missing] = np.nan
    return pd.DataFrame({
        "customer_id": (CUSTOMER_ID_BASE + customer).astype(np.int64),
        "event_timestamp": timestamps,
        "tenure_months": values["tenure_months"].astype(np.int64),
        "monthly_charges": charges,
        "support_calls": values["support_calls"].astype(np.int64),
        "data_usage_gb": np.round(values["data_usage_gb"], 3),
        "contract": contract_names,
        "plan": plan_names,
        "region": region_names,
        "churned": churned,
    })


def _clip(name: str, values: np.ndarray) -> np.ndarray:
    low, high = LIMITS[name]
    out = np.clip(values, low, high)
    return np.round(out) if name in INTEGER else out


def _lookup(effects: dict[str, float], names: np.ndarray) -> np.ndarray:
    return pd.Series(names).map(effects).to_numpy(dtype=np.float64)


def write(out_dir: str | Path, rows: int = 20_000, start: str = "2026-01-01", days: int = 180, seed: int = 7,
          drift: Drift | None = None) -> dict[str, Path]:
    """Write every column to customers.parquet and the Feast sources (profile, usage, label entity rows) beside it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = generate(rows=rows, start=start, days=days, seed=seed, drift=drift)
    keys = ["customer_id", "event_timestamp"]
    parts = {
        "customers": frame,
        "customer_profile": frame[[*keys, *PROFILE]],
        "customer_usage": frame[[*keys, *USAGE]],
        "churn_labels": frame[[*keys, "churned"]],
    }
    paths = {}
    for name, part in parts.items():
        path = out / f"{name}.parquet"
        part.to_parquet(path, engine="pyarrow", index=False)
        paths[name] = path
    return paths


def _parse_shift(text: str) -> tuple[str, float]:
    name, sep, amount = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--shift {text!r}: expected FEATURE=STDDEVS, e.g. monthly_charges=1.5")
    try:
        return name, float(amount)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shift {text!r}: {amount!r} is not a number") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.churn.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory for the Parquet files")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--start", default="2026-01-01", help="first day of observations (UTC)")
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--drift-from", help="date from which the drift below applies")
    parser.add_argument("--shift", type=_parse_shift, action="append", default=[], metavar="FEATURE=STDDEVS",
                        help="covariate shift of a numeric feature, in its standard deviations (repeatable)")
    parser.add_argument("--label-shift", type=float, default=0.0, help="added to the churn log-odds")
    parser.add_argument("--concept", type=float, default=0.0, help="strength of the changed feature-label relation")
    args = parser.parse_args(argv)
    drift_asked = args.shift or args.label_shift or args.concept
    if drift_asked and not args.drift_from:
        parser.error("--shift, --label-shift and --concept need --drift-from DATE")
    try:
        drift = Drift(args.drift_from, dict(args.shift), args.label_shift, args.concept) if args.drift_from else None
        paths = write(args.out, rows=args.rows, start=args.start, days=args.days, seed=args.seed, drift=drift)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    frame = pd.read_parquet(paths["customers"])
    span = f"{frame.event_timestamp.min():%Y-%m-%d} .. {frame.event_timestamp.max():%Y-%m-%d}"
    print(f"{len(frame)} rows, {frame.customer_id.nunique()} customers, {span}, "
          f"churn rate {frame.churned.mean():.3f}" + (f", drift from {args.drift_from}" if drift else ""))
    for path in paths.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

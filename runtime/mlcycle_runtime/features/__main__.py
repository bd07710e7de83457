"""python -m mlcycle_runtime.features apply|materialize --repo DIR: Feast's apply and materialize-incremental
for a repository that may hold nothing but feature_store.yaml (the operator's /etc/feast)."""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from .store import DATA_ENV, FeatureStoreError, _one_line, apply, materialize


def _timestamp(text: str) -> pd.Timestamp:
    try:
        return pd.Timestamp(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a timestamp (e.g. 2026-06-30T00:00:00Z)") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mlcycle_runtime.features", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    definitions_help = ("directory of Feast definitions (*.py); default: the repo itself. In a pod the repo is "
                        "the operator's ConfigMap with feature_store.yaml alone, so the definitions come from here")
    data_help = f"directory of the Parquet sources, exported as {DATA_ENV} for definitions that read it"
    for name, text in (("apply", "register the definitions in the repo's registry (feast apply)"),
                       ("materialize", "load new feature values into the online store (materialize-incremental)")):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--repo", required=True, help="directory holding feature_store.yaml")
        command.add_argument("--definitions", help=definitions_help + (
            "; when given, they are applied before materializing" if name == "materialize" else ""))
        command.add_argument("--data", help=data_help)
        if name == "materialize":
            command.add_argument("--end", type=_timestamp, help="materialize up to this time (default: now, UTC)")
            command.add_argument("--start", type=_timestamp, help="backfill from this time instead of from each "
                                 "view's last run (default: incremental; a view's first run starts one TTL before now)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "apply" or args.definitions:
            apply(args.repo, definitions=args.definitions, data=args.data)
        if args.command == "materialize":
            for view, high_mark in materialize(args.repo, end=args.end, start=args.start):
                print(f"{view}: materialized up to {high_mark.isoformat() if high_mark else 'nothing yet'}")
    except (FeatureStoreError, ValueError, OSError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

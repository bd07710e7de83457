"""python -m mlcycle_runtime.batch --config /etc/mlcycle/config.json"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlcycle_runtime import config as cfg
from mlcycle_runtime.report import Reporter


def report_bad_config(path: str, reason: str) -> None:
    """A config that does not validate still names its BatchPrediction: report Failed there, so the operator sees
    why."""
    try:
        raw = json.loads(Path(path).read_text())
        name, namespace = raw["name"], raw.get("namespace", "default")
        field = (raw.get("report") or {}).get("statusField", "report")
        if not isinstance(name, str) or not isinstance(namespace, str) or not isinstance(field, str):
            return
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # nothing names the run: the one-line reason on stderr is all there is
    Reporter("BatchPrediction", name, namespace, field).send({"phase": "Failed", "error": reason})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlcycle_runtime.batch", description=__doc__)
    parser.add_argument("--config", default=cfg.DEFAULT_PATH, help="the BatchPrediction's runtime config (JSON)")
    args = parser.parse_args(argv)
    try:
        config = cfg.load(cfg.BatchConfig, args.config)
    except cfg.ConfigError as err:
        report_bad_config(args.config, str(err.code))
        raise
    from mlcycle_runtime.batch.run import BatchRun

    return BatchRun(config).execute()


if __name__ == "__main__":
    sys.exit(main())

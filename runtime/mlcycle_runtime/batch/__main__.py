"""python -m mlcycle_runtime.batch --config /etc/mlcycle/config.json"""

from __future__ import annotations

import argparse
import sys

from mlcycle_runtime import config as cfg
from mlcycle_runtime import report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlcycle_runtime.batch", description=__doc__)
    parser.add_argument("--config", default=cfg.DEFAULT_PATH, help="the BatchPrediction's runtime config (JSON)")
    args = parser.parse_args(argv)
    try:
        config = cfg.load(cfg.BatchConfig, args.config)
    except cfg.ConfigError as err:
        report.report_bad_config("BatchPrediction", args.config, str(err.code), default_field="report")
        raise
    from mlcycle_runtime.batch.run import BatchRun

    return BatchRun(config).execute()


if __name__ == "__main__":
    sys.exit(main())

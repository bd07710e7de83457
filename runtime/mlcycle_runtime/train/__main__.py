"""python -m mlcycle_runtime.train --config /etc/mlcycle/config.json"""

from __future__ import annotations

import argparse
import sys

from mlcycle_runtime import config as cfg
from mlcycle_runtime import report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlcycle_runtime.train", description=__doc__)
    parser.add_argument("--config", default=cfg.DEFAULT_PATH, help="the TrainingJob's runtime config (JSON)")
    args = parser.parse_args(argv)
    try:
        config = cfg.load(cfg.TrainConfig, args.config)
    except cfg.ConfigError as err:
        report.report_bad_config("TrainingJob", args.config, str(err.code), default_field="result")
        raise
    from mlcycle_runtime.train.run import Run

    return Run(config).execute()


if __name__ == "__main__":
    sys.exit(main())

"""python -m mlcycle_runtime.serve --config /etc/mlcycle/config.json: check the config, then run `bentoml serve`.

The config is checked here, once, so a wrong one ends the pod with a one-line reason instead of a worker
traceback; the workers read the same file through MLCYCLE_CONFIG. Workers come from MLCYCLE_SERVE_WORKERS.
"""

from __future__ import annotations

import argparse
import os
import sys

from mlcycle_runtime import config as cfg
from mlcycle_runtime import storage
from mlcycle_runtime.model import ensure_bentoml_home

SERVICE = "mlcycle_runtime.serve.service:ModelServer"


def command(config: cfg.ServeConfig, host: str) -> list[str]:
    """The `bentoml serve` command line for a checked config."""
    return [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", host, "--port", str(config.port)]


def check(config: cfg.ServeConfig) -> None:
    """What can be known before starting BentoML: a model URI that names a complete version."""
    if not config.model.uri:
        raise cfg.ConfigError("model.uri: the model server needs the URI of a model version")
    try:
        found = storage.exists(config.model.uri)
    except Exception as err:  # any fsspec backend error: the reason is what matters here
        raise cfg.ConfigError(f"model.uri: cannot read {config.model.uri}: {err}") from None
    if not found:
        raise cfg.ConfigError(f"model.uri: {config.model.uri} is not a complete model version")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlcycle_runtime.serve", description=__doc__)
    parser.add_argument("--config", default=cfg.DEFAULT_PATH, help="the workload config (JSON)")
    parser.add_argument("--host", default=cfg.bind_host(),
                        help="address to listen on (default: $MLCYCLE_BIND_HOST or all)")
    args = parser.parse_args(argv)
    config = cfg.load(cfg.ServeConfig, args.config)
    check(config)
    workers = os.environ.get("MLCYCLE_SERVE_WORKERS", "1")
    if not workers.isdigit() or int(workers) < 1:
        raise cfg.ConfigError(f"MLCYCLE_SERVE_WORKERS: expected a positive integer, got {workers!r}")
    ensure_bentoml_home()
    os.environ["MLCYCLE_CONFIG"] = os.path.abspath(args.config)
    argv_ = command(config, args.host)
    # exec: the pod's PID 1 becomes BentoML's arbiter, which handles SIGTERM for a graceful shutdown.
    os.execv(argv_[0], argv_)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())

"""`python -m mlcycle_runtime.router --config /etc/mlcycle/config.json`: serve the router on config.port."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os

import uvicorn

from mlcycle_runtime.bodylimit import BodyLimit
from mlcycle_runtime.config import DEFAULT_PATH, RouterConfig, bind_host, load

from .app import Router


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlcycle_runtime.router", description=__doc__)
    parser.add_argument("--config", default=DEFAULT_PATH, help="the router's config.json (runtime contract)")
    parser.add_argument("--host", default=bind_host(),
                        help="address to listen on (default: $MLCYCLE_BIND_HOST or all)")
    args = parser.parse_args(argv)
    config = load(RouterConfig, args.config)
    logging.basicConfig(level=os.environ.get("MLCYCLE_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The C event loop and HTTP parser roughly halve the router's own cost per request; fall back when absent.
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    router = Router(config, args.config)
    # The limit is read per request: a rewritten config applies as the routes do.
    app = BodyLimit(router, lambda: router.config.max_request_bytes,
                    on_refused=lambda: router.metrics.request("none", 413, None))
    uvicorn.run(app, host=args.host, port=config.port, loop=loop, http=http,
                lifespan="on", access_log=False, log_level="warning", server_header=False, date_header=False,
                proxy_headers=False)


if __name__ == "__main__":
    main()

"""`python -m mlcycle_runtime.drift --config /etc/mlcycle/config.json [--once]`: the drift monitor.

It serves /metrics, /livez and /readyz (ready once the reference is loaded) on config.port and computes a report
every `spec.schedule`; with --once it computes one report, writes it and exits (0 when a report was written).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from mlcycle_runtime.config import DEFAULT_PATH, DriftConfig, bind_host, load

from .monitor import Monitor, MonitorError

log = logging.getLogger("mlcycle_runtime.drift")


def schedule(monitor: Monitor, stop: threading.Event) -> None:
    """Report every schedule until stopped; a failed tick is logged in one line and retried at the next."""
    while not stop.is_set():
        try:
            report = monitor.tick()
            log.info("report: %d samples, drifted=%s %s", report["samples"], report["drifted"],
                     ",".join(report["driftedFeatures"]) or report.get("reason", ""))
        except MonitorError as err:
            log.error("no report this time, retrying in %s: %s", monitor.config.spec.schedule, err)
        except Exception:  # a bug must not stop the monitor silently: log it with its traceback, keep serving
            log.exception("report failed, retrying in %s", monitor.config.spec.schedule)
        stop.wait(monitor.schedule_seconds)


def app(monitor: Monitor) -> Starlette:
    stop = threading.Event()

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(monitor.registry), media_type=CONTENT_TYPE_LATEST)

    async def livez(_: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(_: Request) -> Response:
        if monitor.ready:
            return PlainTextResponse("ready\n")
        return PlainTextResponse(f"not ready: {monitor.last_error or 'reference not loaded yet'}\n", status_code=503)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        worker = threading.Thread(target=schedule, args=(monitor, stop), name="drift-schedule", daemon=True)
        worker.start()
        yield
        stop.set()
        worker.join(timeout=10)

    return Starlette(routes=[Route("/metrics", metrics), Route("/livez", livez), Route("/readyz", readyz)],
                     lifespan=lifespan)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlcycle_runtime.drift", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=DEFAULT_PATH, help="the monitor's config.json (runtime contract)")
    parser.add_argument("--once", action="store_true", help="compute one report, write it and exit")
    parser.add_argument("--host", default=bind_host(),
                        help="address to listen on (default: $MLCYCLE_BIND_HOST or all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("MLCYCLE_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    monitor = Monitor(load(DriftConfig, args.config))
    if args.once:
        try:
            report = monitor.tick()
        except MonitorError as err:
            print(f"mlcycle: no drift report: {err}", file=sys.stderr)
            return 1
        print(f"drift report: {report['samples']} samples, drifted={report['drifted']} "
              f"{','.join(report['driftedFeatures'])}".rstrip())
        return 0
    uvicorn.run(app(monitor), host=args.host, port=monitor.config.port, lifespan="on", access_log=False,
                log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The router: a bare ASGI app (no framework on the hot path) that proxies each request to one model version
through one pooled aiohttp session, mirrors a share to shadow versions, and keeps per-version metrics.

Everything that does not change the client's answer (feature binning, shadow calls and their comparison) runs
after the response has been sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from yarl import URL

from mlcycle_runtime import storage
from mlcycle_runtime.config import RouterConfig
from mlcycle_runtime.reference import Reference

from . import predlog
from . import table as tables
from .endpoints import Endpoints, Slice
from .telemetry import RouterMetrics
from .watch import ClusterWatcher, FileWatcher, watching_cluster

log = logging.getLogger("mlcycle.router")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

TOLERANCE_ENV = "MLCYCLE_SHADOW_TOLERANCE"
TIMEOUT_ENV = "MLCYCLE_ROUTER_TIMEOUT_S"
REFERENCE_RETRY_ENV = "MLCYCLE_ROUTER_REFERENCE_RETRY_S"
# Mirrored calls in flight at most; beyond that a mirror is skipped, so a slow shadow cannot pile up tasks.
SHADOW_CONCURRENCY = 64
SHADOW_TIMEOUT_SECONDS = 10.0
PREDICT_PATH = "/predict"
REQUEST_ID = b"x-request-id"
LOCAL_PATHS = frozenset({"/livez", "/readyz", "/metrics"})
# Hop-by-hop headers (RFC 9110 §7.6.1), those the client library recomputes, and Expect (the body is already
# read, so there is nothing to continue).
DROP_HEADERS = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
                          b"trailer", b"trailers", b"transfer-encoding", b"upgrade", b"host", b"content-length",
                          b"expect"})
JSON_HEADERS = [(b"content-type", b"application/json")]


def log_settings(config: RouterConfig) -> predlog.Settings | None:
    log_config = config.prediction_log
    if log_config is None:
        return None
    return predlog.Settings(log_config.uri, log_config.sample_rate, log_config.flush_seconds,
                            tuple(log_config.entity_keys))


class NoUpstream(Exception):
    """No version could take the request."""


def _float_env(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise SystemExit(f"mlcycle: {name} must be a number, got {value!r}") from None


class Router:
    """The ASGI application; its routing table, endpoints and reference change live under it."""

    def __init__(self, config: RouterConfig, config_path: str | Path | None = None, *,
                 watch_cluster: bool | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.watch_cluster = watching_cluster() if watch_cluster is None else watch_cluster
        self.tolerance = _float_env(TOLERANCE_ENV, tables.DEFAULT_SHADOW_TOLERANCE)
        self.timeout = _float_env(TIMEOUT_ENV, 30.0)
        self.reference_retry = _float_env(REFERENCE_RETRY_ENV, 30.0)
        self.metrics = RouterMetrics(config.namespace, config.name)
        self.predictions = predlog.PredictionLog(config.name, log_settings(config), self.metrics.prediction_log_rows)
        self.table = tables.from_config(config)
        self.traffic: list[dict[str, Any]] = []
        self.endpoints: Endpoints | None = Endpoints(config.namespace) if self.watch_cluster else None
        self.sticky = config.sticky_header.lower().encode("latin-1")
        self.reference_uri: str | None = None
        # In a cluster, the watched ModelDeployment's status.modelUri: the stable version's reference at once,
        # where the mounted config would follow only when the kubelet syncs the ConfigMap (a minute or more).
        self.served_uri: str | None = None
        self._reference_wanted = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._shadow_timeout = aiohttp.ClientTimeout(total=SHADOW_TIMEOUT_SECONDS)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._shadows_in_flight = 0
        self._cluster: ClusterWatcher | None = None
        # In a cluster, not ready before both watches have listed once (until then Service URLs cannot resolve).
        self._synced = {"traffic": not self.watch_cluster, "slices": not self.watch_cluster}

    # --- live state ---------------------------------------------------------------------------------------

    def set_config(self, config: RouterConfig) -> None:
        self.config = config
        self.sticky = config.sticky_header.lower().encode("latin-1")
        self.predictions.configure(log_settings(config))
        self._rebuild()
        if self.wanted_reference != self.reference_uri:
            self._reference_wanted.set()

    @property
    def wanted_reference(self) -> str | None:
        return self.served_uri or self.config.reference_uri

    def set_traffic(self, traffic: list[dict[str, Any]], model_uri: str | None = None) -> None:
        """The ModelDeployment's status.traffic (empty: not rolled out yet, or deleted, keeps the config's table)
        and status.modelUri, whose reference the features are binned with."""
        self.traffic = traffic
        self._synced["traffic"] = True
        if model_uri and model_uri != self.served_uri:
            self.served_uri = model_uri
            self._reference_wanted.set()
        self._rebuild()

    def set_slices(self, slices: dict[str, Slice]) -> None:
        if self.endpoints is not None:
            self.endpoints.replace(slices)
        self._synced["slices"] = True

    def _rebuild(self) -> None:
        try:
            new = tables.from_traffic(self.traffic, self.config) if self.traffic else tables.from_config(self.config)
        except (KeyError, ValueError) as err:
            log.warning("routing table not changed: %s", err)
            return
        if new.routes != self.table.routes:
            log.info("routing table: %s", ", ".join(
                f"{r.version}={r.weight}%{f' shadow {r.shadow_percent}%' if r.shadow_percent else ''} ({r.role})"
                for r in new.routes) or "empty")
        self.table = new
        self.metrics.announce(r.version for r in new.routes)

    async def _load_reference(self) -> None:
        """Keep the reference of config.reference_uri loaded; retry while it is unavailable (log once per URI)."""
        failed_uri = None
        while True:
            uri = self.wanted_reference
            if uri != self.reference_uri:
                if not uri:
                    self.metrics.set_reference(None)
                    self.reference_uri = None
                else:
                    try:
                        data = await asyncio.to_thread(storage.read_json, uri, storage.REFERENCE)
                        self.metrics.set_reference(Reference.from_json(data))
                        self.metrics.announce(r.version for r in self.table.routes)
                        self.reference_uri = uri
                        log.info("reference histograms loaded from %s", uri)
                    except Exception as err:
                        if failed_uri != uri:
                            log.warning("reference %s unavailable, routing without binning features "
                                        "(retrying every %.0fs): %s", uri, self.reference_retry, err)
                            failed_uri = uri
            self._reference_wanted.clear()
            retry = self.reference_retry if uri and uri != self.reference_uri else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reference_wanted.wait(), timeout=retry)

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def startup(self) -> None:
        # Idle upstream connections are dropped before uvicorn's (BentoML's server) 5 s keep-alive ends, so the
        # router never sends on a connection the server is closing (that would look like the version failing).
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=30, keepalive_timeout=4)
        # auto_decompress off: bodies pass through byte for byte with their content-encoding.
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=min(self.timeout, 2.0)),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"))
        self._spawn(self._load_reference())
        self._spawn(self.predictions.run())
        if self.config_path:
            self._spawn(FileWatcher(self.config_path, self.set_config).run())
        if self.watch_cluster:
            self._cluster = ClusterWatcher(self.config.namespace, self.config.name, asyncio.get_running_loop(),
                                           self.set_traffic, self.set_slices)
            self._cluster.start()

    async def shutdown(self) -> None:
        if self._cluster:
            self._cluster.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session:
            await self._session.close()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)  # a reference, so the task is not collected mid-flight
        task.add_done_callback(self._tasks.discard)

    # --- ASGI ---------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope["path"] in LOCAL_PATHS and scope["method"] == "GET":
                await self._local(scope["path"], send)
            else:
                await self._proxy(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as err:
                    await send({"type": "lifespan.startup.failed", "message": str(err)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _local(self, path: str, send: Send) -> None:
        if path == "/metrics":
            await _respond(send, 200, generate_latest(self.metrics.registry),
                           [(b"content-type", CONTENT_TYPE_LATEST.encode())])
        elif path == "/livez":
            await _respond(send, 200, b'{"status": "ok"}', JSON_HEADERS)
        elif not self.table:
            await _respond(send, 503, b'{"error": "no routing table with a route loaded yet"}', JSON_HEADERS)
        elif not all(self._synced.values()):
            await _respond(send, 503, b'{"error": "waiting for the first list of the ModelDeployment and its '
                                      b'EndpointSlices"}', JSON_HEADERS)
        else:
            await _respond(send, 200, b'{"status": "ready"}', JSON_HEADERS)

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        body = await _read_body(receive)
        headers, sticky, rid = self._forward_headers(scope["headers"])
        method = scope["method"]
        target = scope.get("raw_path") or scope["path"].encode()
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        table = self.table
        route = table.pick(sticky, random.random())
        try:
            if route is None:
                raise NoUpstream("no version to route to: the routing table is empty")
            answered, status, out_headers, content = await self._call(route, method, target.decode("latin-1"),
                                                                      headers, body, start)
        except NoUpstream as err:
            self.metrics.request(route.version if route else "none", 503, None)
            await _respond(send, 503, json.dumps({"error": str(err)}).encode(), JSON_HEADERS)
            return
        except TimeoutError:
            assert route is not None
            self.metrics.request(route.version, 504, None)
            await _respond(send, 504, json.dumps({"error": f"version {route.version} did not answer within "
                                                           f"{self.timeout:g}s"}).encode(), JSON_HEADERS)
            return
        out_headers.append((self.sticky, answered.version.encode("latin-1")))
        out_headers.append((REQUEST_ID, rid.encode("latin-1")))
        await _respond(send, status, content, out_headers)
        if status == 200 and method == "POST" and scope["path"] == PREDICT_PATH:
            self._after_predict(table, answered, headers, body, content, rid)

    def _forward_headers(self, raw: list[tuple[bytes, bytes]]) -> tuple[list[tuple[str, str]], str | None, str]:
        """The headers to pass upstream, the sticky version asked for, and the request's id (the client's
        x-request-id when it is a sane one, else a new one), which goes upstream and back to the client."""
        sticky_name = self.sticky
        sticky = given = None
        headers = []
        for name, value in raw:
            if name in DROP_HEADERS:
                continue
            if name == sticky_name:
                sticky = value.decode("latin-1")
            if name == REQUEST_ID:
                given = value.decode("latin-1")
                continue
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
        rid = predlog.request_id(given)
        headers.append(("x-request-id", rid))
        return headers, sticky, rid

    def _base(self, route: tables.Route) -> str:
        return self.endpoints.pick(route.url) if self.endpoints is not None else route.url

    async def _call(self, route: tables.Route, method: str, target: str, headers: list[tuple[str, str]],
                    body: bytes, start: float) -> tuple[tables.Route, int, list[tuple[bytes, bytes]], bytes]:
        """One upstream call; a connection error retries once on the stable route (a version going away in a
        promotion or rollback must lose no request)."""
        try:
            status, out, content = await self._send(route, method, target, headers, body)
        except (aiohttp.ClientConnectionError, OSError) as err:
            if isinstance(err, TimeoutError) and not isinstance(err, aiohttp.ConnectionTimeoutError):
                raise
            # Counted against the version that failed, so a canary that refuses connections shows errors.
            self.metrics.request(route.version, 502, None)
            fallback = self.table.stable
            if fallback is None:
                raise NoUpstream(f"version {route.version} is unreachable and there is no stable version") from None
            log.debug("version %s unreachable (%s); retrying on %s", route.version, err, fallback.version)
            route = fallback
            try:
                status, out, content = await self._send(route, method, target, headers, body)
            except (aiohttp.ClientConnectionError, OSError) as again:
                if isinstance(again, TimeoutError) and not isinstance(again, aiohttp.ConnectionTimeoutError):
                    raise
                raise NoUpstream(f"no version reachable (last: {route.version}: {again})") from None
        self.metrics.request(route.version, status, time.perf_counter() - start)
        return route, status, out, content

    async def _send(self, route: tables.Route, method: str, target: str, headers: list[tuple[str, str]],
                    body: bytes, timeout: aiohttp.ClientTimeout | None = None,
                    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        assert self._session is not None
        url = URL(self._base(route) + target, encoded=True)
        kwargs = {"timeout": timeout} if timeout else {}
        async with self._session.request(method, url, headers=headers, data=body or None, allow_redirects=False,
                                         **kwargs) as response:
            content = await response.read()
            out = [(name.lower(), value) for name, value in response.raw_headers
                   if name.lower() not in DROP_HEADERS]
            return response.status, out, content

    # --- after the answer: binning and mirroring -------------------------------------------------------------

    def _after_predict(self, table: tables.RoutingTable, answered: tables.Route, headers: list[tuple[str, str]],
                       body: bytes, content: bytes, rid: str) -> None:
        mirrors = table.mirrors(answered, random.random)
        logged = self.predictions.sampled()
        if not mirrors and not self.metrics.binning and not logged:
            return
        try:
            records = json.loads(body).get("records")
            predictions = json.loads(content).get("predictions")
        except (ValueError, AttributeError):
            return
        if not isinstance(records, list) or not isinstance(predictions, list):
            return
        try:
            self.metrics.observe_predict(answered.version, records, predictions)
        except Exception:  # binning must never affect routing; a bug here shows in the log, not in the answers
            log.exception("binning a request failed")
        if logged:
            self.predictions.add(answered.version, answered.role, rid, records, predictions)
        for route in mirrors:
            if self._shadows_in_flight >= SHADOW_CONCURRENCY:
                break
            self._shadows_in_flight += 1
            self._spawn(self._mirror(route, headers, body, predictions, (rid, records) if logged else None))

    async def _mirror(self, route: tables.Route, headers: list[tuple[str, str]], body: bytes,
                      answer: list[Any], logged: tuple[str, list[Any]] | None = None) -> None:
        start = time.perf_counter()
        try:
            status, _, content = await self._send(route, "POST", PREDICT_PATH, headers, body, self._shadow_timeout)
            self.metrics.request(route.version, status, time.perf_counter() - start)
            if status != 200:
                self.metrics.shadow(route.version, "error")
                return
            predictions = json.loads(content)["predictions"]
            same = tables.agree(answer, predictions, self.tolerance)
            self.metrics.shadow(route.version, "agree" if same else "disagree")
            if logged is not None:  # the shadow's answer to a logged request, beside the one the client got
                self.predictions.add(route.version, "shadow", logged[0], logged[1], predictions)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self.metrics.shadow(route.version, "error")
            log.debug("shadow %s failed: %s", route.version, err)
        finally:
            self._shadows_in_flight -= 1


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body"):
        return body
    chunks = [body]
    while message.get("more_body"):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

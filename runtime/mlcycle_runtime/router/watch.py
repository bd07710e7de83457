"""Where the routing table comes from: the config file (polled for changes) and, in a cluster, the
ModelDeployment's `status.traffic` and the namespace's EndpointSlices (watched through the API server)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlcycle_runtime.config import ConfigError, RouterConfig, load

from .endpoints import SERVICE_LABEL, Slice, slices_by_name

log = logging.getLogger("mlcycle.router")

GROUP, VERSION, PLURAL = "mlcycle.io", "v1alpha1", "modeldeployments"
FILE_POLL_SECONDS = 0.5
# A watch is re-opened this often (a fresh list each time), so a silently dropped connection costs at most this.
WATCH_SECONDS = 60
RECONNECT_SECONDS = 1.0


def watching_cluster(env: Mapping[str, str] = os.environ) -> bool:
    """In a pod, or asked to (tests point KUBECONFIG at their control plane)."""
    return bool(env.get("KUBERNETES_SERVICE_HOST")) or env.get("MLCYCLE_ROUTER_WATCH") == "1"


class FileWatcher:
    """Reloads the config file when it changes (mtime, inode or size: a ConfigMap update swaps a symlink)."""

    def __init__(self, path: str | Path, on_config: Callable[[RouterConfig], None]) -> None:
        self.path = Path(path)
        self.on_config = on_config
        self._seen = self._signature()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_ino, st.st_size

    async def run(self) -> None:
        while True:
            await asyncio.sleep(FILE_POLL_SECONDS)
            signature = self._signature()
            if signature is None or signature == self._seen:
                continue
            self._seen = signature
            try:
                config = load(RouterConfig, self.path)
            except ConfigError as err:
                # A half-written or wrong file must not take routing down: keep the table we have.
                log.warning("config %s not applied: %s", self.path, err)
                continue
            log.info("config %s reloaded: %d routes", self.path, len(config.routes))
            self.on_config(config)


class ClusterWatcher:
    """Watches one ModelDeployment and the EndpointSlices of its namespace in daemon threads (the kubernetes
    client is synchronous) and hands every change to the event loop."""

    def __init__(self, namespace: str, name: str, loop: asyncio.AbstractEventLoop,
                 on_traffic: Callable[[list[dict[str, Any]], str | None], None],
                 on_slices: Callable[[dict[str, Slice]], None]) -> None:
        self.namespace, self.name, self.loop = namespace, name, loop
        self.on_traffic, self.on_slices = on_traffic, on_slices
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        from kubernetes import client, config

        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
            api_client = client.ApiClient()
        else:
            api_client = config.new_client_from_config(os.environ.get("KUBECONFIG"))
        self._api = api_client
        custom = client.CustomObjectsApi(api_client)
        discovery = client.DiscoveryV1Api(api_client)
        self._threads = [
            threading.Thread(target=self._loop, name="watch-modeldeployment", daemon=True, args=(
                custom.list_namespaced_custom_object, dict(group=GROUP, version=VERSION, namespace=self.namespace,
                                                           plural=PLURAL, field_selector=f"metadata.name={self.name}"),
                self._deployment_changed)),
            threading.Thread(target=self._loop, name="watch-endpointslices", daemon=True, args=(
                discovery.list_namespaced_endpoint_slice, dict(namespace=self.namespace, label_selector=SERVICE_LABEL),
                self._slices_changed)),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=0.2)  # a thread blocked in a watch read ends with the process (daemon)
        self._api.close()

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(callback, *args)

    def _deployment_changed(self, objects: dict[str, dict[str, Any]]) -> None:
        deployment = objects.get(self.name)
        status = (deployment or {}).get("status") or {}
        self._post(self.on_traffic, list(status.get("traffic") or []), status.get("modelUri"))

    def _slices_changed(self, objects: dict[str, dict[str, Any]]) -> None:
        self._post(self.on_slices, slices_by_name(objects.values()))

    def _loop(self, list_fn: Callable[..., Any], kwargs: dict[str, Any],
              changed: Callable[[dict[str, dict[str, Any]]], None]) -> None:
        """List, then watch from the list's resourceVersion; any error or expiry starts over with a fresh list."""
        from kubernetes import watch

        what = kwargs.get("plural", "endpointslices")
        failures = 0
        while not self._stop.is_set():
            try:
                listing = json.loads(list_fn(**kwargs, _preload_content=False).data)
                objects = {o["metadata"]["name"]: o for o in listing.get("items") or []}
                changed(dict(objects))
                if failures:
                    log.info("watch of %s in %s restored", what, self.namespace)
                failures = 0
                stream = watch.Watch()
                for event in stream.stream(list_fn, **kwargs, resource_version=listing["metadata"]["resourceVersion"],
                                           timeout_seconds=WATCH_SECONDS, allow_watch_bookmarks=True):
                    if self._stop.is_set():
                        stream.stop()
                        return
                    kind, obj = event["type"], event["raw_object"]
                    if kind == "ERROR":
                        break  # e.g. 410 Gone: the resourceVersion expired; list again
                    if kind == "BOOKMARK":
                        continue
                    name = obj["metadata"]["name"]
                    if kind == "DELETED":
                        objects.pop(name, None)
                    else:
                        objects[name] = obj
                    changed(dict(objects))
            except Exception as err:
                if self._stop.is_set():
                    return  # the client was closed under a blocked read: shutting down, not a failure
                failures += 1
                if failures == 1:
                    log.warning("watch of %s in %s failed (%s); retrying every %.0fs", what, self.namespace,
                                str(err).splitlines()[0] if str(err) else type(err).__name__, RECONNECT_SECONDS)
                self._stop.wait(RECONNECT_SECONDS)

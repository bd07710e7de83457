"""Service URLs resolved to ready endpoints through EndpointSlices, so the router needs neither cluster DNS nor
kube-proxy (the local process node has neither) and spreads requests over a version's pods itself."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

SERVICE_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True)
class Slice:
    """The ready addresses and ports of one EndpointSlice."""

    service: str
    addresses: tuple[str, ...]
    ports: tuple[tuple[str | None, int], ...]  # (name, port)


def slice_from_object(obj: Mapping[str, Any]) -> Slice | None:
    """A Slice from an EndpointSlice as the API serves it (camelCase dict); None when it names no Service."""
    service = ((obj.get("metadata") or {}).get("labels") or {}).get(SERVICE_LABEL)
    if not service:
        return None
    addresses = []
    for endpoint in obj.get("endpoints") or []:
        # An unset `ready` means unknown, which consumers must treat as ready (EndpointConditions API doc).
        if (endpoint.get("conditions") or {}).get("ready") is False:
            continue
        addresses.extend(endpoint.get("addresses") or [])
    ports = tuple((p.get("name"), int(p["port"])) for p in obj.get("ports") or [] if p.get("port"))
    return Slice(service, tuple(addresses), ports)


def _service_of(url: str) -> tuple[str, str, int, str] | None:
    """(service, namespace, port, path) of `http://<svc>.<ns>.svc[.cluster.local]:<port>[/path]`, else None."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    labels = host.split(".")
    if len(labels) < 3 or labels[2] != "svc":
        return None
    return labels[0], labels[1], parts.port or 80, parts.path.rstrip("/")


def _port_for(ports: tuple[tuple[str | None, int], ...], service_port: int) -> int | None:
    # A slice lists target ports, which need not equal the Service port: one port is the answer; with several,
    # prefer the same number, then the conventional name "http".
    if not ports:
        return None
    if len(ports) == 1:
        return ports[0][1]
    for _, port in ports:
        if port == service_port:
            return port
    for name, port in ports:
        if name == "http":
            return port
    return ports[0][1]


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


class Endpoints:
    """Maps a Service URL to base URLs of its ready endpoints in one namespace; unknown URLs pass through."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._slices: dict[str, Slice] = {}
        self._cache: dict[str, tuple[str, ...]] = {}

    def replace(self, slices: Mapping[str, Slice]) -> None:
        """The namespace's slices by name, as the watch last saw them."""
        self._slices = dict(slices)
        self._cache = {}

    def targets(self, url: str) -> tuple[str, ...]:
        """Base URLs of the ready endpoints behind `url` (empty when it is not a Service of this namespace or
        has none ready)."""
        cached = self._cache.get(url)
        if cached is None:
            cached = self._cache[url] = self._resolve(url)
        return cached

    def pick(self, url: str) -> str:
        """One ready endpoint of `url`, at random; `url` itself when none is known (DNS may still resolve it)."""
        targets = self.targets(url)
        if not targets:
            return url
        return targets[0] if len(targets) == 1 else random.choice(targets)

    def _resolve(self, url: str) -> tuple[str, ...]:
        parsed = _service_of(url)
        if parsed is None or parsed[1] != self.namespace:
            return ()
        service, _, service_port, path = parsed
        targets: list[str] = []
        for item in self._slices.values():
            if item.service != service:
                continue
            port = _port_for(item.ports, service_port)
            if port is not None:
                targets.extend(f"http://{_host(a)}:{port}{path}" for a in item.addresses)
        return tuple(dict.fromkeys(targets))


def slices_by_name(objects: Iterable[Mapping[str, Any]]) -> dict[str, Slice]:
    """Slices keyed by object name, skipping those that belong to no Service."""
    out = {}
    for obj in objects:
        item = slice_from_object(obj)
        if item is not None:
            out[obj["metadata"]["name"]] = item
    return out

"""The routing table: which version answers a request, which versions see a mirrored copy, and the shadow
agreement rule. Pure logic; the random numbers are passed in so tests can drive every branch.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mlcycle_runtime.config import RouterConfig

SERVER_PORT = 3000
DEFAULT_SHADOW_TOLERANCE = 0.05
Role = Literal["stable", "candidate"]


def child_name(*parts: str, limit: int = 63) -> str:
    """A DNS-1123 name from parts, exactly as the operator names its children (long names keep a hash)."""
    name = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def version_url(deployment: str, namespace: str, version: str) -> str:
    """The Service URL of one version's model server, as the operator creates it."""
    return f"http://{child_name(deployment, 'v', version)}.{namespace}.svc:{SERVER_PORT}"


@dataclass(frozen=True)
class Route:
    version: str
    weight: int
    role: Role
    shadow_percent: int
    url: str


@dataclass(frozen=True)
class RoutingTable:
    """Routes with precomputed cumulative weights, so one choice is a bisect over a short list."""

    routes: tuple[Route, ...] = ()
    by_version: Mapping[str, Route] = field(init=False)
    stable: Route | None = field(init=False)
    shadows: tuple[Route, ...] = field(init=False)
    _cumulative: tuple[int, ...] = field(init=False)
    _weighted: tuple[Route, ...] = field(init=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: derived fields are computed once here
        set_(self, "by_version", {r.version: r for r in self.routes})
        stable = [r for r in self.routes if r.role == "stable"]
        # The stable route takes retries; with several (mid-promotion) the heaviest one wins.
        set_(self, "stable", max(stable, key=lambda r: r.weight) if stable else None)
        set_(self, "shadows", tuple(r for r in self.routes if r.shadow_percent > 0))
        weighted = tuple(r for r in self.routes if r.weight > 0)
        set_(self, "_weighted", weighted)
        set_(self, "_cumulative", tuple(itertools.accumulate(r.weight for r in weighted)))

    def __bool__(self) -> bool:
        return bool(self.routes)

    def choose(self, draw: float) -> Route | None:
        """The route for a uniform draw in [0, 1): weighted by `weight`; the stable one when no weight is set."""
        if not self._cumulative:
            return self.stable
        index = bisect.bisect_right(self._cumulative, draw * self._cumulative[-1])
        return self._weighted[min(index, len(self._weighted) - 1)]

    def pick(self, sticky: str | None, draw: float) -> Route | None:
        """A sticky header naming a version in the table wins; anything else is a weighted choice."""
        if sticky:
            route = self.by_version.get(sticky)
            if route is not None:
                return route
        return self.choose(draw)

    def mirrors(self, answered: Route, draw: Callable[[], float]) -> list[Route]:
        """Routes that get a copy of this request: each shadow route with its own percent, never the one
        that answered (comparing a version with itself says nothing)."""
        if not self.shadows:
            return []
        return [r for r in self.shadows if r is not answered and draw() * 100 < r.shadow_percent]


def from_config(config: RouterConfig) -> RoutingTable:
    """The table the ConfigMap seeds."""
    return RoutingTable(tuple(Route(r.version, r.weight, r.role, r.shadow_percent, r.url) for r in config.routes))


def from_traffic(traffic: Iterable[Mapping[str, Any]], config: RouterConfig) -> RoutingTable:
    """The table from a ModelDeployment's `status.traffic`; a version's URL comes from the config when it names
    one, else the operator's Service for that version."""
    urls = {r.version: r.url for r in config.routes}
    routes = []
    for entry in traffic:
        version = str(entry["version"])
        role = entry.get("role") or "stable"
        if role not in ("stable", "candidate"):
            raise ValueError(f"traffic entry for version {version!r} has an unknown role {role!r}")
        weight = _percent(entry.get("weight", 0), "weight", version)
        shadow = _percent(entry.get("shadowPercent", 0), "shadowPercent", version)
        url = urls.get(version) or version_url(config.name, config.namespace, version)
        routes.append(Route(version, weight, role, shadow, url))
    return RoutingTable(tuple(routes))


def _percent(value: Any, name: str, version: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise ValueError(f"traffic entry for version {version!r}: {name} must be 0..100, got {value!r}")
    return int(value)


def agree(answer: Sequence[float], shadow: Sequence[float], tolerance: float = DEFAULT_SHADOW_TOLERANCE) -> bool:
    """Two answers agree when they have as many predictions and each pair differs by at most `tolerance`."""
    if len(answer) != len(shadow):
        return False
    return all(abs(a - b) <= tolerance for a, b in zip(answer, shadow, strict=True))

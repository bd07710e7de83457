"""The cluster tier: real containers on a kind cluster made from kind-config.yaml, every image built here.

One cluster per run of this package (KubeRay's e2e habit): built, then shared by every test in its own
namespace, and deleted when the package is done, before the other tiers start their own control plane. The
chart is installed with Helm from charts/mlcycle, and the operator runs as its Deployment under its RBAC.

Nothing may be pulled from a registry: at the end the fixture reads Docker's events and every node's
"Pulling" Events and fails the run on any pull it did not expect (tests that want a pull to fail name the
reference in ``KindHandle.expected_pulls``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness import images, kind, kind_loop
from tests.harness.binaries import BuildError
from tests.harness.pytest_support import unavailable

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_NAME = os.environ.get("MLCYCLE_KIND_NAME", "mlcycle-test")
RELEASE = "mlcycle"
SYSTEM_NAMESPACE = "mlcycle-system"
# Where the runtime's pods run: the workers (the control plane is tainted), so the 2 GB image goes only there.
WORKERS = (f"{CLUSTER_NAME}-worker", f"{CLUSTER_NAME}-worker2")


@dataclass
class KindHandle:
    cluster: kind.KindCluster
    project: images.ProjectImages
    started: float
    expected_pulls: set[str] = field(default_factory=set)

    @property
    def kubeconfig(self) -> Path:
        return self.cluster.kubeconfig

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        return self.cluster.kubectl_run(*args, check=check, input=input)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(self.cluster.helm), *args, "--kubeconfig", str(self.kubeconfig)],
                              capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args[:2])} failed: {proc.stderr.strip()}")
        return proc


def _log(request: pytest.FixtureRequest):
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def log(message: str) -> None:
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(message)

    return log


def _unexpected_pulls(handle: KindHandle) -> list[str]:
    """Every pull of a remote image since the cluster began, by Docker or by a node, not asked for."""
    pulls = []
    since = str(int(handle.started))
    proc = subprocess.run(["docker", "events", "--since", since, "--until", str(int(time.time()) + 1),
                           "--filter", "type=image", "--filter", "event=pull", "--format", "{{.Actor.ID}}"],
                          capture_output=True, text=True)
    pulls += [f"docker pull {ref}" for ref in proc.stdout.split()]
    events = handle.kubectl("get", "events", "--all-namespaces", "--field-selector", "reason=Pulling",
                            "-o", "json", check=False)
    if events.returncode == 0:
        for event in json.loads(events.stdout)["items"]:
            ref = re.search(r'image "([^"]+)"', event.get("message", ""))
            if ref and ref.group(1) not in handle.expected_pulls:
                obj = event["involvedObject"]
                pulls.append(f"{obj.get('namespace')}/{obj.get('name')} pulled {ref.group(1)}")
    return pulls


@pytest.fixture(scope="package")
def kind_cluster(request: pytest.FixtureRequest) -> Iterator[KindHandle]:
    """A kind cluster from kind-config.yaml with the project's images loaded and the chart installed."""
    reason = images.docker_available()
    if reason:
        unavailable("kind cluster", reason)
    log = _log(request)
    started = time.time()
    cluster = kind.KindCluster(name=CLUSTER_NAME, directory=Path(os.environ.get(
        "MLCYCLE_KIND_DIR", f"/tmp/mlcycle-kind-{CLUSTER_NAME}")))
    try:
        t0 = time.monotonic()
        project = images.project_images(log=log)
        log(f"[cluster] project images in {time.monotonic() - t0:.0f}s: "
            f"{project.operator} ({images.size_mb(project.operator):,.0f} MB), "
            f"{project.runtime} ({images.size_mb(project.runtime):,.0f} MB)")
        if os.environ.get("MLCYCLE_KEEP_KIND") and cluster.exists():
            log(f"[cluster] reusing the kept cluster {CLUSTER_NAME} (MLCYCLE_KEEP_KIND)")
        else:
            cluster.delete(log=log)  # one left by an interrupted run holds the host ports
            cluster.create(log=log)
        t0 = time.monotonic()
        prometheus = kind.prometheus_image(log=log)
        metrics_server = kind.metrics_server_image(log=log)
        for image in (project.operator, project.runtime, prometheus, metrics_server):
            cluster.load(image, list(WORKERS))
        log(f"[cluster] images loaded into {', '.join(WORKERS)} in {time.monotonic() - t0:.0f}s")
        cluster.install_metrics_server(metrics_server)
    except BuildError as err:
        cluster.delete(log=log)
        pytest.fail(f"the kind cluster could not be made: {err}", pytrace=False)
    handle = KindHandle(cluster=cluster, project=project, started=started)
    try:
        yield handle
        pulls = _unexpected_pulls(handle)
        assert not pulls, f"images were pulled from a registry: {pulls}"
    finally:
        if os.environ.get("MLCYCLE_KEEP_KIND"):
            log(f"[cluster] kept (the next run with MLCYCLE_KEEP_KIND reuses it): export KUBECONFIG="
                f"{cluster.kubeconfig}")
        else:
            cluster.delete(log=log)


# The chart as the cluster tier installs it: what `MLCYCLE_DEMO=kind make demo` installs (kind_loop.CHART_VALUES):
# its own Prometheus on, its UI where kind-config.yaml maps it (localhost:9090), a 5 s scrape for the loop's 10 s
# analysis windows; everything else the chart's defaults.
CHART_VALUES = kind_loop.CHART_VALUES
PROMETHEUS_URL, ROUTER_URL = kind_loop.PROMETHEUS_URL, kind_loop.ROUTER_URL  # kind-config.yaml's port mappings


def install_chart(h: KindHandle, *values: str) -> None:
    """helm upgrade --install of charts/mlcycle with CHART_VALUES and `values`, nothing kept from before."""
    h.helm("upgrade", "--install", RELEASE, str(ROOT / "charts" / "mlcycle"), "--namespace", SYSTEM_NAMESPACE,
           "--create-namespace", "--wait", "--timeout", "180s", "--reset-values", *CHART_VALUES, *values)


@pytest.fixture(scope="package")
def chart(kind_cluster: KindHandle) -> Iterator[KindHandle]:
    """The chart installed into mlcycle-system, watching every namespace; Ready operator."""
    install_chart(kind_cluster)
    if os.environ.get("MLCYCLE_KEEP_KIND"):
        # A kept cluster may run an operator pod of an earlier build under the same tag: start it again.
        kind_cluster.kubectl("rollout", "restart", "-n", SYSTEM_NAMESPACE, f"deployment/{RELEASE}")
        kind_cluster.kubectl("rollout", "status", "-n", SYSTEM_NAMESPACE, f"deployment/{RELEASE}", "--timeout=120s")
    yield kind_cluster
    kind_cluster.helm("uninstall", RELEASE, "--namespace", SYSTEM_NAMESPACE, "--wait", check=False)


@pytest.fixture
def kube_namespace(request: pytest.FixtureRequest, kind_cluster: KindHandle) -> Iterator[str]:
    """A fresh namespace in the kind cluster for one test, deleted afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:5]}"
    kind_cluster.kubectl("create", "namespace", name)
    kind_cluster.kubectl("label", "namespace", name, "mlcycle.io/test=true")
    yield name
    # Waited for while the operator runs: its finalizers go with what it owns, not after it.
    kind_cluster.kubectl("delete", "namespace", name, "--timeout=120s", check=False)

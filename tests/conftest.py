"""Fixtures shared by every tier: the local control plane, an API client, a namespace per test."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Session fixtures the cluster tiers share; imported here so that there is exactly one instance of each.
from tests.cluster_fixtures import ml, mlcycle_crds, operator, prometheus, router_metrics  # noqa: F401
from tests.harness import binaries
from tests.harness.cluster import MARKER_CONFIGMAP, LocalCluster
from tests.harness.pytest_support import unavailable

# A local Ray a test starts on this host (the trainer's, in its process or a child) keeps to loopback: Ray's node
# address is otherwise this machine's own interface address, and test traffic goes only to loopback or into
# namespaces the tests made. Ray names this switch for Windows and macOS, where it is off by default; on Linux it
# only stops `ray start` from joining other machines, which no test does here. Process-node pods get an
# environment of their own: their Ray uses the pod's address, inside the pod's network namespace.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

# Set to a kubeconfig (e.g. the one `make cluster-up` prints) to reuse a running test cluster.
REUSE_ENV = "MLCYCLE_TEST_KUBECONFIG"


def _unavailable(reason: str):
    unavailable("control plane", reason)


class ClusterHandle:
    """What tests need to know about the cluster, whether started here or reused."""

    def __init__(self, kubeconfig: Path, local: LocalCluster | None):
        self.kubeconfig = kubeconfig
        self.local = local

    def log_tails(self) -> str:
        return self.local.log_tails() if self.local else "(reused cluster: logs are where it was started)"


_CLUSTER_NOTES = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[ClusterHandle]:
    """A real control plane for the whole session, stopped (every process) at the end."""
    reuse = os.environ.get(REUSE_ENV)
    if reuse:
        handle = ClusterHandle(Path(reuse), None)
        _refuse_foreign_cluster(handle)
        yield handle
        return
    if shutil.which("go") is None and not all(binaries.install_dir(c).exists() for c in binaries.COMPONENTS.values()):
        _unavailable("no Go toolchain to build kube-apiserver, etcd and KWOK")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    notes = request.config.stash.setdefault(_CLUSTER_NOTES, [])

    def log(message: str) -> None:
        notes.append(message)
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(message)

    try:
        paths = binaries.ensure_all(log=log)
    except binaries.BuildError as err:
        _unavailable(str(err))
    directory = Path(tempfile.mkdtemp(prefix="mlcycle-cluster-"))
    local = LocalCluster(directory=directory, binaries=paths)
    local.start(log=log)
    try:
        yield ClusterHandle(local.kubeconfig_path, local)
    finally:
        local.stop(log=log)
        if not request.session.testsfailed:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            log(f"[harness] component logs kept in {directory / 'logs'}")


def _refuse_foreign_cluster(handle: ClusterHandle) -> None:
    """Tests create and delete namespaces freely: never let them loose on a cluster we did not make."""
    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(str(handle.kubeconfig)))
    try:
        api.read_namespaced_config_map(MARKER_CONFIGMAP, "kube-system")
    except client.ApiException as err:
        pytest.exit(f"{REUSE_ENV} points at a cluster without kube-system/{MARKER_CONFIGMAP}: "
                    f"refusing to run tests against it ({err.status})", returncode=2)


@pytest.fixture(scope="session")
def api_client(cluster: ClusterHandle):
    from kubernetes import config

    client = config.new_client_from_config(str(cluster.kubeconfig))
    yield client
    client.close()


@pytest.fixture
def namespace(request: pytest.FixtureRequest, api_client) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (its contents go with it)."""
    from kubernetes import client

    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:5]}"
    core = client.CoreV1Api(api_client)
    labels = {"mlcycle.io/test": "true"}
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
    yield name
    core.delete_namespace(name)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failing test that used the cluster shows the tail of every component's log."""
    outcome = yield
    report = outcome.get_result()
    handle = getattr(item, "funcargs", {}).get("cluster")
    if report.failed and handle is not None:
        report.sections.append(("control-plane logs (tail)", handle.log_tails()))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Repeat what the harness measured (build, start-up time, peak memory) where it is easy to find."""
    notes = config.stash.get(_CLUSTER_NOTES, [])
    if notes:
        terminalreporter.write_sep("-", "local control plane")
        for note in notes:
            terminalreporter.write_line(note)

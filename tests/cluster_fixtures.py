"""Fixtures of the tiers that run on the cluster: the mlcycle CRDs, Prometheus, the operator, and a namespace with
model storage. Registered once, in tests/conftest.py, so the integration and e2e tiers share one operator (a
conftest per tier would start one per tier, and two operators would fight over the same objects)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.integration.helpers import Mlcycle, bind_models_volume

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mlcycle_crds(api_client) -> list[str]:
    """Apply crds/*.yaml (what the chart ships) and wait until the API server serves them."""
    from kubernetes import client

    ext = client.ApiextensionsV1Api(api_client)
    names = []
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        try:
            ext.create_custom_resource_definition(body)
        except client.ApiException as err:
            if err.status != 409:
                raise
            existing = ext.read_custom_resource_definition(body["metadata"]["name"])
            body["metadata"]["resourceVersion"] = existing.metadata.resource_version
            ext.replace_custom_resource_definition(body["metadata"]["name"], body)
        names.append(body["metadata"]["name"])
    deadline = time.monotonic() + 30
    for name in names:
        while True:
            conditions = ext.read_custom_resource_definition(name).status.conditions or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"CRD {name} was not Established within 30s")
            time.sleep(0.1)
    return names


@pytest.fixture(scope="session")
def router_metrics():
    """Router metrics with traffic the tests control (see tests/harness/router_metrics.py)."""
    from tests.harness.router_metrics import RouterMetrics

    metrics = RouterMetrics()
    yield metrics
    metrics.stop()


@pytest.fixture(scope="session")
def prometheus(cluster, router_metrics, tmp_path_factory):
    """A real Prometheus scraping the router metrics every second, and the pods of the process nodes."""
    import shutil

    from tests.harness.prometheus import Prometheus
    from tests.harness.pytest_support import unavailable

    if shutil.which("prometheus") is None:
        unavailable("Prometheus", "the 'prometheus' binary is not installed (make system-deps)")
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), targets=[router_metrics.target],
                        kubeconfig=cluster.kubeconfig)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def operator(cluster, mlcycle_crds, prometheus):
    """The mlcycle operator, in this process (kopf.testing.KopfRunner), watching every namespace and
    analysing canaries with the session's Prometheus."""
    import os

    from kopf.testing import KopfRunner

    saved = {k: os.environ.get(k) for k in ("KUBECONFIG", "MLCYCLE_PROMETHEUS_URL")}
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    os.environ["MLCYCLE_PROMETHEUS_URL"] = prometheus.url
    with KopfRunner(["run", "--all-namespaces", "--standalone", "-m", "mlcycle_operator.handlers"],
                    timeout=60) as runner:
        yield runner
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    assert runner.exception is None, f"the operator crashed: {runner.exception!r}\n{runner.output[-3000:]}"


@pytest.fixture
def ml(api_client, namespace, operator) -> Iterator[Mlcycle]:
    """Helpers for the test's namespace, with a volume for the example's pvc://churn-models storage: the
    test cluster has no provisioner, so a PersistentVolume is bound to the claim in advance (by the real
    PV controller), as an administrator would."""
    core = client.CoreV1Api(api_client)
    pv = bind_models_volume(core, namespace)
    yield Mlcycle(api_client, namespace)
    core.delete_persistent_volume(pv)



"""Integration fixtures: the mlcycle CRDs installed into the session's control plane."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


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
def operator(cluster, mlcycle_crds):
    """The mlcycle operator, in this process (kopf.testing.KopfRunner), watching every namespace."""
    import os

    from kopf.testing import KopfRunner

    saved = {k: os.environ.get(k) for k in ("KUBECONFIG", "MLCYCLE_PROMETHEUS_URL")}
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    os.environ.pop("MLCYCLE_PROMETHEUS_URL", None)
    with KopfRunner(["run", "--all-namespaces", "--standalone", "-m", "mlcycle_operator.handlers"],
                    timeout=60) as runner:
        yield runner
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    assert runner.exception is None, f"the operator crashed: {runner.exception!r}\n{runner.output[-3000:]}"

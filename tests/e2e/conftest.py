"""End-to-end fixtures: a node that runs pods for real (the operator and namespaces are tests/conftest.py's).

While an e2e module runs, the KWOK nodes are cordoned, so every pod the operator creates lands on the process
node and what the operator writes into a pod spec is what actually runs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.harness import process_node
from tests.harness.pytest_support import unavailable


@pytest.fixture(scope="module")
def node(api_client, prometheus) -> Iterator[process_node.ProcessNode]:
    reason = process_node.available()
    if reason:
        unavailable("process node", reason)
    core = client.CoreV1Api(api_client)
    fake = [n.metadata.name for n in core.list_node(label_selector="type=kwok").items]
    for name in fake:
        core.patch_node(name, {"spec": {"unschedulable": True}})
    pn = process_node.ProcessNode(api_client, Path(tempfile.mkdtemp(prefix="mlcycle-e2e-node-")),
                                  name="process-node-e2e", subnet=1, host_ports=(prometheus.port,))
    pn.start()
    try:
        yield pn
    finally:
        pn.stop()
        core.delete_node(pn.name)
        for name in fake:
            core.patch_node(name, {"spec": {"unschedulable": False}})

"""The process node: pods scheduled to it run as local processes, as the e2e tier needs them to.

Real control plane, real processes: a Deployment's pod serves HTTP in a network namespace of its own from a
mounted ConfigMap as uid 65532 with a read-only root, becomes Ready through its probe and appears in its
Service's EndpointSlice; its address is on none of the host's own interfaces: another pod reaches it over the
node's bridge, the host only on loopback; Jobs complete or fail by exit code; an in-cluster client
authenticates with the projected service-account token (the API server relayed into the pod's namespace);
deleting a pod kills its process group and removes its namespace, and stopping the node removes every
namespace it made.
"""

from __future__ import annotations

import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client

from tests.harness import netns, process_node
from tests.harness.pytest_support import unavailable
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration

NODE = "process-node-test"
# This node exactly: another process node (an e2e module's, being torn down) must not take these pods.
ON_NODE = {"nodeSelector": {process_node.NODE_LABEL: "true", "kubernetes.io/hostname": NODE}}
RESTRICTED = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "readOnlyRootFilesystem": True,
              "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


@pytest.fixture(scope="module")
def node(api_client):
    reason = process_node.available()
    if reason:
        unavailable("process node", reason)
    directory = Path(tempfile.mkdtemp(prefix="mlcycle-process-node-"))
    pn = process_node.ProcessNode(api_client, directory, name=NODE)
    pn.start()
    yield pn
    made = pn.network.node_ns
    pn.stop()
    client.CoreV1Api(api_client).delete_node(pn.name)
    assert not [n for n in netns.names() if n == made or n.startswith(f"{made}-")], "namespaces left behind"


def host_addresses() -> str:
    return subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout


def pod_of(core: client.CoreV1Api, namespace: str, selector: str) -> client.V1Pod | None:
    """The selector's pod that is not being deleted (a deleted one may still be listed, and first, for a while)."""
    pods = [p for p in core.list_namespaced_pod(namespace, label_selector=selector).items
            if p.metadata.deletion_timestamp is None]
    return pods[0] if pods else None


def job(name: str, code: str) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                **ON_NODE, "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "python", "command": ["python", "-c", code],
                                "securityContext": RESTRICTED}]}}}}


def test_a_deployment_serves_from_its_own_address_and_joins_its_endpointslice(api_client, namespace, node):
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "site"},
                                                  "data": {"index.html": "hello from a configmap"}})
    labels = {"app": "web"}
    apps.create_namespaced_deployment(namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {**ON_NODE, "containers": [{
                "name": "web", "image": "python",
                "command": ["python", "-m", "http.server", "8000", "--directory", "/srv/site"],
                "ports": [{"name": "http", "containerPort": 8000}],
                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                "livenessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 2, "initialDelaySeconds": 2},
                "securityContext": RESTRICTED,
                "volumeMounts": [{"name": "site", "mountPath": "/srv/site", "readOnly": True},
                                 {"name": "tmp", "mountPath": "/tmp"}]}],
                "volumes": [{"name": "site", "configMap": {"name": "site"}}, {"name": "tmp", "emptyDir": {}}]}}}})
    core.create_namespaced_service(namespace, {"metadata": {"name": "web"}, "spec": {
        "selector": labels, "ports": [{"port": 80, "targetPort": "http"}]}})

    def ready():
        pod = pod_of(core, namespace, "app=web")
        ok = pod and pod.status.conditions and any(c.type == "Ready" and c.status == "True"
                                                   for c in pod.status.conditions)
        return pod if ok else None

    pod = wait_for(ready, 60, "the web pod to be Ready")
    ip = pod.status.pod_ip
    assert ip.startswith(node.prefix) and ip != f"{node.prefix}1"
    assert f" {ip}/" not in host_addresses(), "the pod address is on one of the host's own interfaces"
    local = process_node.host_address(ip)
    assert local.startswith("127.")
    with urllib.request.urlopen(f"http://{local}:8000/index.html", timeout=5) as response:
        assert response.read().decode() == "hello from a configmap"
    pod_ns = node.network.pod_ns(ip)
    assert pod_ns in netns.names()
    inside = subprocess.run(["ip", "-n", pod_ns, "-o", "addr", "show", "dev", "eth0"], capture_output=True,
                            text=True, check=True).stdout
    assert f" {ip}/24 " in inside

    discovery = client.DiscoveryV1Api(api_client)

    def endpoint_addresses():
        slices = discovery.list_namespaced_endpoint_slice(namespace, label_selector="kubernetes.io/service-name=web")
        return [a for s in slices.items for e in (s.endpoints or []) if e.conditions.ready for a in e.addresses]

    assert wait_for(endpoint_addresses, 30, "the pod in the Service's EndpointSlice") == [ip]

    # Another pod reaches it at its pod address, over the node's bridge (as a router reaches a model server).
    batch = client.BatchV1Api(api_client)
    batch.create_namespaced_job(namespace, job("peer", "import urllib.request; print(urllib.request.urlopen("
                                                f"'http://{ip}:8000/index.html', timeout=5).read().decode())"))
    wait_for(lambda: any(c.type == "Complete" and c.status == "True"
                         for c in batch.read_namespaced_job_status("peer", namespace).status.conditions or []),
             60, "the peer job to fetch the page")
    assert node.logs(namespace, pod_of(core, namespace, "job-name=peer").metadata.name).strip() == \
        "hello from a configmap"

    # The process group dies with the pod; the ReplicaSet's replacement gets a new address.
    core.delete_namespaced_pod(pod.metadata.name, namespace)

    def gone():
        try:
            urllib.request.urlopen(f"http://{local}:8000/", timeout=1)
        except OSError:
            return pod_ns not in netns.names()
        return False

    wait_for(gone, 30, "the deleted pod's server and namespace to go")
    replacement = wait_for(lambda: (p := ready()) and p.metadata.uid != pod.metadata.uid and p, 60,
                           "a replacement pod")
    assert replacement.status.pod_ip != ip


def test_jobs_complete_or_fail_by_exit_code_and_keep_their_logs(api_client, namespace, node):
    batch, core = client.BatchV1Api(api_client), client.CoreV1Api(api_client)
    batch.create_namespaced_job(namespace, job("ok", "import os; print('uid', os.getuid())"))
    batch.create_namespaced_job(namespace, job("fails", "open('/written', 'w')"))

    def finished(name: str, condition: str):
        status = batch.read_namespaced_job_status(name, namespace).status
        return any(c.type == condition and c.status == "True" for c in status.conditions or [])

    wait_for(lambda: finished("ok", "Complete"), 60, "job ok to complete")
    wait_for(lambda: finished("fails", "Failed"), 60, "job fails to fail")
    ok_pod = pod_of(core, namespace, "job-name=ok")
    assert node.logs(namespace, ok_pod.metadata.name).strip() == "uid 65532"
    failed = pod_of(core, namespace, "job-name=fails")
    terminated = failed.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 1
    assert "Read-only file system" in node.logs(namespace, failed.metadata.name)


def test_in_cluster_clients_authenticate_with_the_projected_token(api_client, namespace, node):
    batch, rbac = client.BatchV1Api(api_client), client.RbacAuthorizationV1Api(api_client)
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "read-pods"}, "rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "read-pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-pods"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": namespace}]})
    code = ("import os; from kubernetes import client, config; config.load_incluster_config(); "
            "pod = client.CoreV1Api().read_namespaced_pod(os.environ['POD_NAME'], os.environ['POD_NAMESPACE']); "
            "print('me', pod.metadata.name, pod.status.pod_ip)")
    body = job("whoami", code)
    body["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]
    batch.create_namespaced_job(namespace, body)
    wait_for(lambda: any(c.type in ("Complete", "Failed") and c.status == "True"
                         for c in batch.read_namespaced_job_status("whoami", namespace).status.conditions or []),
             60, "the whoami job to finish")
    pod = pod_of(client.CoreV1Api(api_client), namespace, "job-name=whoami")
    out = node.logs(namespace, pod.metadata.name)
    assert out.strip() == f"me {pod.metadata.name} {pod.status.pod_ip}", out
    assert not any(Path(process_node.SA_DIR).glob("*")), "the token is mounted for the pod only, not on the host"


def test_a_node_removes_the_namespaces_a_killed_run_of_its_subnet_left():
    reason = process_node.available()
    if reason:
        unavailable("process node", reason)
    probe = netns.NodeNetwork(preferred_subnet=200)
    subnet = probe.subnet
    probe.close()
    # What a run killed mid-test leaves: its namespaces (its subnet lock died with it).
    for name in (f"mlcycle-pn{subnet}", f"mlcycle-pn{subnet}-7"):
        subprocess.run(["ip", "netns", "add", name], check=True)
    network = netns.NodeNetwork(preferred_subnet=subnet)
    try:
        assert network.subnet == subnet
        assert f"mlcycle-pn{subnet}-7" not in netns.names()
        assert f"mlcycle-pn{subnet}" in netns.names()  # made afresh
    finally:
        network.close()
    assert not [n for n in netns.names() if n.startswith(f"mlcycle-pn{subnet}")]

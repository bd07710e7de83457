"""The chart installed with Helm on the kind cluster: the operator as its Deployment, under its ServiceAccount
and RBAC, as uid 65532 on a read-only root filesystem, probes passing, reconciling in both watch modes."""

from __future__ import annotations

import json

import httpx
import pytest
import yaml

from tests.cluster.conftest import PROMETHEUS_URL, RELEASE, SYSTEM_NAMESPACE, KindHandle, install_chart
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.cluster


def _project(name: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "mlcycle.io/v1alpha1",
        "kind": "MLProject",
        "metadata": {"name": name},
        "spec": {
            "objective": {"businessMetric": "churn", "metric": {"name": "roc_auc", "direction": "maximize"}},
            "owners": ["ml-platform@example.com"],
            "storage": {"uri": f"pvc://{name}-models/artifacts", "pvc": {"size": "1Gi",
                                                                          "accessMode": "ReadWriteOnce"}},
        },
    })


def _operator_pod(h: KindHandle) -> dict:
    pods = json.loads(h.kubectl("get", "pods", "-n", SYSTEM_NAMESPACE, "-l",
                                "app.kubernetes.io/name=mlcycle", "-o", "json").stdout)["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
    assert running, f"no running operator pod: {[p['status'].get('phase') for p in pods]}"
    return running[0]


def _phase(h: KindHandle, namespace: str, name: str) -> str | None:
    out = h.kubectl("get", "mlproject", name, "-n", namespace, "-o", "jsonpath={.status.phase}", check=False)
    return out.stdout.strip() or None


def test_the_operator_runs_as_the_charts_deployment_as_non_root_on_a_read_only_root(chart: KindHandle):
    pod = _operator_pod(chart)
    name = pod["metadata"]["name"]
    assert pod["spec"]["serviceAccountName"] == RELEASE
    ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert ready["Ready"] == "True", pod["status"]
    container = pod["spec"]["containers"][0]
    assert container["livenessProbe"] and container["readinessProbe"], "the chart's probes are not set"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # What the container really is, not what its spec asks for.
    assert chart.kubectl("exec", "-n", SYSTEM_NAMESPACE, name, "--", "id", "-u").stdout.strip() == "65532"
    touch = chart.kubectl("exec", "-n", SYSTEM_NAMESPACE, name, "--", "python", "-c",
                          "open('/opt/venv/probe', 'w')", check=False)
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr, touch.stderr
    writable = chart.kubectl("exec", "-n", SYSTEM_NAMESPACE, name, "--", "python", "-c",
                             "open('/tmp/probe', 'w').write('ok')", check=False)
    assert writable.returncode == 0, f"/tmp (the emptyDir) is not writable: {writable.stderr}"
    restarts = pod["status"]["containerStatuses"][0]["restartCount"]
    assert restarts == 0, f"the operator restarted {restarts} times"


def test_the_operator_reconciles_with_only_the_charts_permissions(chart: KindHandle, kube_namespace: str):
    chart.kubectl("apply", "-n", kube_namespace, "-f", "-", input=_project("churn"))
    wait_for(lambda: _phase(chart, kube_namespace, "churn") == "Ready", timeout=60, what="MLProject Ready")
    sa = chart.kubectl("get", "serviceaccount", "-n", kube_namespace, "-o", "name").stdout
    assert "serviceaccount/mlcycle-churn" in sa or "churn" in sa, sa
    logs = chart.kubectl("logs", "-n", SYSTEM_NAMESPACE, _operator_pod(chart)["metadata"]["name"]).stdout
    denied = [line for line in logs.splitlines() if "forbidden" in line.lower() or " 403" in line]
    assert not denied, "the operator was refused by its RBAC:\n" + "\n".join(denied[:10])


def test_with_watch_namespaces_the_operator_reconciles_only_there(chart: KindHandle, kube_namespace: str):
    other = f"{kube_namespace}-other"[:63]
    chart.kubectl("create", "namespace", other)
    install_chart(chart, "--set", f"watchNamespaces={{{kube_namespace}}}")
    try:
        chart.kubectl("apply", "-n", kube_namespace, "-f", "-", input=_project("watched"))
        chart.kubectl("apply", "-n", other, "-f", "-", input=_project("unwatched"))
        wait_for(lambda: _phase(chart, kube_namespace, "watched") == "Ready", timeout=60,
                 what="MLProject Ready in a watched namespace")
        # The watched one is done; the other had the same time and got nothing, not even a finalizer.
        unwatched = json.loads(chart.kubectl("get", "mlproject", "unwatched", "-n", other, "-o", "json").stdout)
        assert not unwatched.get("status") and not unwatched["metadata"].get("finalizers"), unwatched
        rb = chart.kubectl("get", "rolebindings", "-n", other, "-o", "name").stdout
        assert "mlcycle" not in rb, f"the operator holds permissions in an unwatched namespace: {rb}"

        # Back to every namespace: the one it ignored is reconciled now.
        install_chart(chart)
        wait_for(lambda: _phase(chart, other, "unwatched") == "Ready", timeout=90,
                 what="MLProject Ready once every namespace is watched again")
    finally:
        install_chart(chart)
        chart.kubectl("delete", "namespace", other, "--timeout=120s", check=False)


def test_the_in_chart_prometheus_finds_the_operator_through_kubernetes_discovery(chart: KindHandle):
    pod = _operator_pod(chart)["metadata"]["name"]

    def scraped() -> dict | None:
        try:
            answer = httpx.get(f"{PROMETHEUS_URL}/api/v1/query", params={"query": f'up{{pod="{pod}"}}'}, timeout=5)
        except httpx.HTTPError:
            return None
        result = answer.json()["data"]["result"]
        return result[0] if result and result[0]["value"][1] == "1" else None

    # Through the node port kind-config.yaml maps to localhost:9090, from a target found by pod discovery.
    up = wait_for(scraped, timeout=120, what=f"up{{pod={pod}}} == 1 in the in-chart Prometheus", every=3)
    assert up["metric"]["namespace"] == SYSTEM_NAMESPACE, up

"""make demo: the local control plane, the mlcycle CRDs, the operator, and the churn example applied to it.

What runs today is the control plane half: the operator reconciles the four resources into their children
and explains in status what happens. The workloads (trainer, model server, router, drift monitor) exist in
runtime/ and run as real pods in tests/e2e on the process node, but this demo's pods are still KWOK's and run
nothing, so the training job ends Failed with the reason in words. `make cluster-down` stops everything the
demo started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness import binaries  # noqa: E402
from tests.harness.__main__ import DEFAULT_DIR  # noqa: E402
from tests.harness.cluster import LocalCluster, is_running  # noqa: E402
from tests.harness.operator_process import start_operator  # noqa: E402

NAMESPACE = "churn-demo"


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def main() -> int:
    directory = DEFAULT_DIR
    existing = LocalCluster.from_state(directory)
    if existing is not None and any(is_running(p) for p in existing.processes):
        print(f"a local cluster is already running from {directory}; `make cluster-down` first", file=sys.stderr)
        return 1
    step("building (or reusing) the control-plane binaries")
    paths = binaries.ensure_all()
    kubectl = str(paths["kubectl"])
    step("starting etcd, kube-apiserver, controller-manager, scheduler and KWOK nodes")
    cluster = LocalCluster(directory=directory, binaries=paths)
    cluster.start()
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig_path)}

    def kubectl_run(*args: str, check: bool = True) -> str:
        return subprocess.run([kubectl, *args], env=env, capture_output=True, text=True, check=check).stdout

    step("installing the mlcycle CRDs")
    print(kubectl_run("apply", "-f", str(ROOT / "crds")), end="")
    kubectl_run("wait", "--for=condition=Established", "crd", "-l", "app.kubernetes.io/name=mlcycle",
                "--timeout=60s")
    step("starting the operator (python -m mlcycle_operator)")
    start_operator(cluster)  # recorded with the cluster: `make cluster-down` stops it too
    print(f"operator log: {cluster.directory / 'logs' / 'operator.log'}")
    step(f"applying examples/churn/manifests to namespace {NAMESPACE}")
    kubectl_run("create", "namespace", NAMESPACE)
    # The example stores models on pvc://churn-models; this cluster has no volume provisioner, so a volume is
    # bound to that claim in advance, as an administrator would.
    volume = json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{NAMESPACE}-models"},
        "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany"],
                 "hostPath": {"path": f"/tmp/{NAMESPACE}-models"}, "persistentVolumeReclaimPolicy": "Retain",
                 "claimRef": {"namespace": NAMESPACE, "name": "churn-models"}}})
    subprocess.run([kubectl, "apply", "-f", "-"], env=env, check=True, capture_output=True, text=True, input=volume)
    print(kubectl_run("apply", "-n", NAMESPACE, "-f", str(ROOT / "examples" / "churn" / "manifests")), end="")
    step("watching the resources for 40 s (kubectl get mlcycle)")
    for _ in range(8):
        time.sleep(5)
        print(kubectl_run("get", "mlcycle", "-n", NAMESPACE, check=False))
    step("what the TrainingJob says about itself")
    print(kubectl_run("get", "tj", "churn-v1", "-n", NAMESPACE, "-o",
                      "jsonpath={range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{'\\n'}{end}"))
    print(f"""
The control plane and the operator keep running. Try:
  export KUBECONFIG={cluster.kubeconfig_path}
  {kubectl} get mlcycle -A
  {kubectl} describe md churn -n {NAMESPACE}
Stop everything with: make cluster-down

Next: run these pods on the process node (tests/harness/process_node.py) with the example's data and feature
store, so that training, serving and the closed loop run for real here (tests/e2e already trains and serves).""")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""make demo: the churn example's closed loop, run for real on this machine.

Without Docker and kind (this project's usual case): a local control plane (etcd, kube-apiserver, controller
manager, scheduler, KWOK), the mlcycle CRDs, a Prometheus, the operator as its own process, and a node whose pods
run as local processes (tests/harness/process_node.py; needs root). Then the example manifests are applied and the
loop runs: v1 trains and is served behind the router, traffic flows, fresh data lands and traffic drifts, the
DriftMonitor starts a retraining, v2 is promoted through a canary analysed on Prometheus, and a deliberately slow
v3 is rolled back. The same scenario the e2e suite asserts (tests/harness/loop.py). It ends with the endpoint, a
sample prediction, the model in service and the history, then stops everything it started (`--keep N` keeps the
loop serving N more seconds first).

With Docker and kind on PATH (and MLCYCLE_DEMO_LOCAL unset), the same loop runs on a kind cluster made from
kind-config.yaml: the operator and runtime images built from their Dockerfiles and loaded into it, the chart
installed with its Prometheus and metrics-server, public images pulled as usual, clients calling the router on
localhost:8080. MLCYCLE_DEMO=kind runs that path on a machine with no registry (ours), every image built here;
MLCYCLE_DEMO=local forces the local path.

Without root, the process node cannot run pods: the demo then shows the control-plane half only (KWOK pods run
nothing) and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness import binaries, process_node  # noqa: E402
from tests.harness.__main__ import DEFAULT_DIR  # noqa: E402
from tests.harness.cluster import LocalCluster, is_running  # noqa: E402
from tests.harness.operator_process import start_operator  # noqa: E402

NAMESPACE = "churn-demo"
KINDS = "mlprojects,trainingjobs,modeldeployments,driftmonitors"  # what `kubectl get mlcycle` lists
START = time.monotonic()


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def say(message: str) -> None:
    print(f"[{time.monotonic() - START:6.0f}s] {message}", flush=True)


def bind_claim(kubectl, namespace: str, host_dir: Path) -> None:
    """The example stores models and data on pvc://churn-models; this cluster has no volume provisioner, so a volume
    is bound to that claim in advance, as an administrator would."""
    volume = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{namespace}-models"},
              "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany"],
                       "hostPath": {"path": str(host_dir)}, "persistentVolumeReclaimPolicy": "Retain",
                       "claimRef": {"namespace": namespace, "name": "churn-models"}}}
    kubectl("apply", "-f", "-", input=json.dumps(volume))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=float, default=0, help="seconds to keep the loop serving at the end")
    args = parser.parse_args(argv)
    mode = os.environ.get("MLCYCLE_DEMO", "")
    if mode == "kind":
        return kind_loop_demo(args.keep, public=False)
    if (mode != "local" and shutil.which("kind") and shutil.which("docker")
            and not os.environ.get("MLCYCLE_DEMO_LOCAL")):
        return kind_loop_demo(args.keep, public=True)
    directory = DEFAULT_DIR
    existing = LocalCluster.from_state(directory)
    if existing is not None and any(is_running(p) for p in existing.processes):
        print(f"a local cluster is already running from {directory}; `make cluster-down` first", file=sys.stderr)
        return 1
    node_problem = process_node.available()

    step("building (or reusing) the control-plane binaries")
    paths = binaries.ensure_all()
    step("starting etcd, kube-apiserver, controller-manager, scheduler and KWOK nodes")
    cluster = LocalCluster(directory=directory, binaries=paths)
    cluster.start()
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig_path)}

    def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
        done = subprocess.run([str(paths["kubectl"]), *args], env=env, capture_output=True, text=True, input=input)
        if check and done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout if done.returncode == 0 else f"(kubectl {' '.join(args)}: {done.stderr.strip()})\n"

    step("installing the mlcycle CRDs")
    print(kubectl("apply", "-f", str(ROOT / "crds")), end="")
    kubectl("wait", "--for=condition=Established", "crd", "-l", "app.kubernetes.io/name=mlcycle", "--timeout=60s")
    kubectl("create", "namespace", NAMESPACE)
    claim_dir = Path(tempfile.mkdtemp(prefix=f"{NAMESPACE}-models-"))
    bind_claim(kubectl, NAMESPACE, claim_dir)
    if node_problem:
        return control_plane_only(cluster, kubectl, node_problem)
    try:
        return closed_loop(cluster, kubectl, claim_dir, args.keep)
    finally:
        step("stopping what the demo started")
        cluster.stop(log=say)


def closed_loop(cluster: LocalCluster, kubectl, claim_dir: Path, keep: float) -> int:
    from kubernetes import client, config

    from tests.harness.loop import ClosedLoop
    from tests.harness.prometheus import Prometheus
    from tests.integration.helpers import Mlcycle

    step("starting Prometheus (it scrapes the pods the process node runs)")
    prometheus = Prometheus(cluster.directory / "prometheus", targets=[], kubeconfig=cluster.kubeconfig_path)
    prometheus.start()
    say(f"Prometheus at {prometheus.url}")
    step("starting the operator (python -m mlcycle_operator)")
    start_operator(cluster, MLCYCLE_PROMETHEUS_URL=prometheus.url)
    say(f"operator log: {cluster.directory / 'logs' / 'operator.log'}")
    step("starting a node whose pods run as local processes; the KWOK nodes are cordoned")
    api = config.new_client_from_config(str(cluster.kubeconfig_path))
    core = client.CoreV1Api(api)
    for node in core.list_node(label_selector="type=kwok").items:
        core.patch_node(node.metadata.name, {"spec": {"unschedulable": True}})
    node = process_node.ProcessNode(api, cluster.directory / "process-node", name="process-node-demo", subnet=2,
                                    host_ports=(prometheus.port,))
    node.start()
    ml = Mlcycle(api, NAMESPACE)
    loop = ClosedLoop(ml, claim_dir, logs=lambda pod: node.logs(NAMESPACE, pod), say=say,
                      pod_address=process_node.host_address)
    try:
        return run_loop(loop, ml, kubectl, keep, where="on the process node")
    finally:
        node.stop()
        prometheus.stop()


def run_loop(loop, ml, kubectl, keep: float, where: str) -> int:
    """The loop's steps, narrated; the report at the end whatever happened."""
    from tests.harness.loop import LoopError

    try:
        step(f"applying the churn example (tuned for minutes: tests/harness/loop.py) to namespace {NAMESPACE}")
        loop.start()
        step(f"v1 trains (Ray, {where}) and must pass its gates")
        loop.first_model()
        step("v1 is served (bentoml serve) behind the router")
        loop.serve()
        step("steady traffic, then fresh data lands and traffic drifts")
        loop.drift()
        step("the retraining trains v2 on the fresh data; the canary is analysed on Prometheus")
        loop.retrain_and_promote()
        step("a bad v3: good offline, slow online")
        loop.bad_model()
    except LoopError as err:
        print(f"\nthe loop stopped: {err}", file=sys.stderr)
        return 1
    finally:
        report(loop, ml, kubectl)
        if keep > 0 and loop.traffic is not None:
            say(f"serving for {keep:.0f} more seconds: try `curl -s {loop.url}/predict -d ...`")
            time.sleep(keep)
        loop.finish()
    return 0


def kind_loop_demo(keep: float, public: bool) -> int:
    """The loop on a kind cluster from kind-config.yaml (tests/harness/kind_loop.py, as the cluster tier runs it),
    the chart installed with its Prometheus, clients calling the router on localhost:8080. `public`: kind and
    Docker on PATH (a user's machine), images pulled from their registries as usual; otherwise (MLCYCLE_DEMO=kind)
    every image built on this machine (tests/harness/kind.py: no registry is reachable here). The cluster is
    deleted at the end (`make kind-down` if interrupted)."""
    from kubernetes import config

    from tests.harness import kind, kind_loop
    from tests.harness.loop import ClosedLoop
    from tests.integration.helpers import Mlcycle

    cluster = kind.KindCluster(name="mlcycle", directory=binaries.cache_root() / "kind" / "mlcycle")
    step("the images from their Dockerfiles, then the cluster of kind-config.yaml" if public else
         "building every image here (kind's node image and the chart's Prometheus and metrics-server from their Go "
         "modules, the operator and runtime images from their Dockerfiles), then the cluster of kind-config.yaml")
    try:
        project = kind_loop.bring_up(cluster, log=say, public=public)
    except kind.BuildError as err:
        print(f"the kind cluster could not be made: {err}", file=sys.stderr)
        cluster.delete(log=say)
        return 1
    say(f"export KUBECONFIG={cluster.kubeconfig}")

    def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
        done = cluster.kubectl_run(*args, check=False, input=input)
        if check and done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout if done.returncode == 0 else f"(kubectl {' '.join(args)}: {done.stderr.strip()})\n"

    try:
        kubectl("create", "namespace", NAMESPACE)
        api = config.new_client_from_config(str(cluster.kubeconfig))
        ml = Mlcycle(api, NAMESPACE)
        loop = ClosedLoop(ml, None, say=say, put=kind_loop.ClaimWriter(cluster, NAMESPACE, project.runtime),
                          logs=lambda pod: kubectl("logs", "-n", NAMESPACE, pod, "--tail=20", check=False),
                          router_url=kind_loop.ROUTER_URL, spec=kind_loop.manifests())
        say(f"the chart's Prometheus: {kind_loop.PROMETHEUS_URL}")
        return run_loop(loop, ml, kubectl, keep, where="in a container on a kind worker")
    finally:
        step("deleting the kind cluster")
        cluster.delete(log=say)


def report(loop, ml, kubectl) -> None:
    step("where it ended")
    print(kubectl("get", KINDS, "-n", NAMESPACE, check=False))
    if getattr(loop, "url", None):
        record = loop.traffic.steady[0]
        import httpx

        answer = httpx.post(f"{loop.url}/predict", json={"records": [record]}, timeout=30)
        md = ml.status("ModelDeployment", "churn")
        print(f"endpoint: {loop.url}/predict (in the cluster: {md.get('endpoint')})")
        print(f"sample prediction: {json.dumps(record)} -> {answer.status_code} {answer.text}")
        print(f"model in service: {md.get('stableVersion')} from TrainingJob {md.get('trainingJob')} "
              f"({md.get('modelUri')})")
    step("history")
    print(loop.summary())


def control_plane_only(cluster: LocalCluster, kubectl, reason: str) -> int:
    step("the process node cannot run here: " + reason)
    print("Showing the control-plane half: the operator reconciles the example into its children; KWOK's pods run "
          "nothing, so the TrainingJob ends Failed with the reason in words.")
    start_operator(cluster)
    print(kubectl("apply", "-n", NAMESPACE, "-f", str(ROOT / "examples" / "churn" / "manifests")), end="")
    for _ in range(8):
        time.sleep(5)
        print(kubectl("get", KINDS, "-n", NAMESPACE, check=False))
    print(f"""The control plane and the operator keep running. Try:
  export KUBECONFIG={cluster.kubeconfig_path}
  kubectl get mlcycle -A
Stop everything with: make cluster-down""")
    return 0


if __name__ == "__main__":
    sys.exit(main())

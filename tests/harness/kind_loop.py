"""The churn loop on a kind cluster made here (tests/harness/kind.py): what `MLCYCLE_DEMO=kind make demo` runs.

The scenario is tests/harness/loop.py's. What a kind cluster needs beyond the process node's manifests, each named:

- the MLProject's claim is ReadWriteOnce: kind's local-path provisioner binds nothing else (every pod that mounts
  it then runs on the node that holds it);
- the ModelDeployment's router Service is a NodePort on 30080, which kind-config.yaml maps to localhost:8080,
  where the clients of the loop call it;
- serving as the example ships it, with adaptive batching and autoscaling on (metrics-server is installed);
- data reaches the claim as a user's would: `kubectl cp` into the example's loader pod, which mounts it.
"""

from __future__ import annotations

import copy
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tests.integration.helpers import EXAMPLES

from . import images, kind, loop

RELEASE, SYSTEM_NAMESPACE = "mlcycle", "mlcycle-system"
ROUTER_URL = "http://127.0.0.1:8080"  # kind-config.yaml: node port 30080
PROMETHEUS_URL = "http://127.0.0.1:9090"  # kind-config.yaml: node port 30090
CHART_VALUES = ("--set", "prometheus.enabled=true", "--set", "prometheus.service.type=NodePort",
                "--set", "prometheus.service.nodePort=30090",
                # The loop's analysis runs every 10 s over a 10 s window: two samples need a 5 s scrape.
                "--set", "prometheus.scrapeInterval=5s")
WORKERS = ("worker", "worker2")


def manifests() -> dict[str, dict[str, Any]]:
    """loop.manifests() with the changes a kind cluster needs (see the module docstring), and the example's
    serving as shipped where the process node could not run it: adaptive batching, and autoscaling (the process
    node has no metrics API), from one server a version to three (the example: two to six; every pod of the
    ReadWriteOnce claim shares one node's 2 CPUs)."""
    spec = copy.deepcopy(loop.manifests())
    spec["MLProject"]["spec"]["storage"].setdefault("pvc", {})["accessMode"] = "ReadWriteOnce"
    spec["ModelDeployment"]["spec"]["service"] = {"type": "NodePort", "nodePort": 30080}
    shipped = EXAMPLES["ModelDeployment"]["spec"]["serving"]
    spec["ModelDeployment"]["spec"]["serving"].update(
        batching=copy.deepcopy(shipped["batching"]),
        autoscaling={**shipped["autoscaling"], "minReplicas": 1, "maxReplicas": 3})
    return spec


class ClaimWriter:
    """Files into the churn-models claim the way examples/churn/README.md tells a user to: through the example's
    loader pod (examples/churn/cluster/loader.yaml: the runtime image as uid 65532, the claim where workloads
    see it), with `kubectl cp`, then a rename (readers never see half a file)."""

    LOADER = kind.REPO / "examples" / "churn" / "cluster" / "loader.yaml"
    MOUNT = Path("/mnt/pvc/churn-models")

    def __init__(self, cluster: kind.KindCluster, namespace: str, image: str):
        self.cluster, self.namespace, self.image = cluster, namespace, image
        self.pod = yaml.safe_load(self.LOADER.read_text())
        self.pod["spec"]["containers"][0]["image"] = image
        self.claim = self.pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
        self._started = False

    def _start(self) -> None:
        deadline = time.monotonic() + 120  # the claim is created by the MLProject's first reconcile
        while self.cluster.kubectl_run("get", "pvc", self.claim, "-n", self.namespace, check=False).returncode:
            if time.monotonic() > deadline:
                raise kind.BuildError(f"claim {self.claim} was not created in namespace {self.namespace}")
            time.sleep(1)
        self.cluster.kubectl_run("apply", "-n", self.namespace, "-f", "-", input=yaml.safe_dump(self.pod))
        self.cluster.kubectl_run("wait", "-n", self.namespace, "--for=condition=Ready",
                                 f"pod/{self.pod['metadata']['name']}", "--timeout=180s")
        self._started = True

    def __call__(self, path: str, frame: pd.DataFrame) -> None:
        if not self._started:
            self._start()
        pod = self.pod["metadata"]["name"]
        target = self.MOUNT / path
        temporary = target.with_name(f".{target.name}.tmp")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / target.name
            frame.to_parquet(local, index=False)
            self.cluster.kubectl_run("exec", "-n", self.namespace, pod, "--", "mkdir", "-p", str(target.parent))
            self.cluster.kubectl_run("cp", str(local), f"{self.namespace}/{pod}:{temporary}")
        self.cluster.kubectl_run("exec", "-n", self.namespace, pod, "--", "mv", str(temporary), str(target))


def bring_up(cluster: kind.KindCluster, log=print, public: bool = False) -> images.ProjectImages:
    """The cluster created from kind-config.yaml, the project's images loaded where pods run, metrics-server, and
    the chart with its Prometheus on localhost:9090. Every image built here; `public`: as on a user's machine
    that reaches the registries (the two images from their Dockerfiles' public bases, kind's node image, the
    chart's Prometheus and metrics-server pulled by the nodes)."""
    started = time.monotonic()
    if public:
        project, metrics_server, extra = images.public_project_images(log), kind.public_metrics_server_image(), ()
    else:
        project, metrics_server = images.project_images(log), kind.metrics_server_image(log)
        extra = (kind.prometheus_image(log), metrics_server)
    log(f"[kind] images ready in {time.monotonic() - started:.0f}s")
    cluster.delete(log=log)
    cluster.create(log=log, public=public)
    started = time.monotonic()
    workers = [f"{cluster.name}-{w}" for w in WORKERS]
    for image in (project.operator, project.runtime, *extra):
        cluster.load(image, workers)
    log(f"[kind] images loaded into {', '.join(workers)} in {time.monotonic() - started:.0f}s")
    cluster.install_metrics_server(metrics_server)
    helm = subprocess.run([str(cluster.helm), "upgrade", "--install", RELEASE, str(kind.REPO / "charts" / "mlcycle"),
                           "--namespace", SYSTEM_NAMESPACE, "--create-namespace", "--wait", "--timeout", "300s",
                           *CHART_VALUES, "--kubeconfig", str(cluster.kubeconfig)], capture_output=True, text=True)
    if helm.returncode != 0:
        raise kind.BuildError(f"helm install failed: {helm.stderr.strip()}")
    log(f"[kind] chart installed: the operator runs as Deployment {RELEASE} in {SYSTEM_NAMESPACE}")
    return project

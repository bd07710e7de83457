"""The churn loop on a kind cluster made here (tests/harness/kind.py): what `MLCYCLE_DEMO=kind make demo` runs.

The scenario is tests/harness/loop.py's. What a kind cluster needs beyond the process node's manifests, each named:

- the MLProject's claim is ReadWriteOnce: kind's local-path provisioner binds nothing else (every pod that mounts
  it then runs on the node that holds it);
- the ModelDeployment's router Service is a NodePort on 30080, which kind-config.yaml maps to localhost:8080,
  where the clients of the loop call it;
- data reaches the claim as a user's would: `kubectl cp` into a pod that mounts it.
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
    """loop.manifests() with the two changes a kind cluster needs (see the module docstring)."""
    spec = copy.deepcopy(loop.manifests())
    spec["MLProject"]["spec"]["storage"].setdefault("pvc", {})["accessMode"] = "ReadWriteOnce"
    spec["ModelDeployment"]["spec"]["service"] = {"type": "NodePort", "nodePort": 30080}
    return spec


class ClaimWriter:
    """Files into a claim through a pod that mounts it (`kubectl cp`, then a rename: readers never see half a
    file). The pod runs the runtime image as uid 65532, like the workloads that read the files."""

    def __init__(self, cluster: kind.KindCluster, namespace: str, claim: str, image: str):
        self.cluster, self.namespace, self.claim, self.image = cluster, namespace, claim, image
        self.pod = f"{claim}-loader"
        self._started = False

    def _start(self) -> None:
        pod = {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": self.pod},
            "spec": {
                "securityContext": {"runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": True},
                "containers": [{"name": "loader", "image": self.image, "command": ["sleep", "infinity"],
                                "volumeMounts": [{"name": "claim", "mountPath": "/claim"}]}],
                "volumes": [{"name": "claim", "persistentVolumeClaim": {"claimName": self.claim}}],
            },
        }
        deadline = time.monotonic() + 120  # the claim is created by the MLProject's first reconcile
        while self.cluster.kubectl_run("get", "pvc", self.claim, "-n", self.namespace, check=False).returncode:
            if time.monotonic() > deadline:
                raise kind.BuildError(f"claim {self.claim} was not created in namespace {self.namespace}")
            time.sleep(1)
        self.cluster.kubectl_run("apply", "-n", self.namespace, "-f", "-", input=yaml.safe_dump(pod))
        self.cluster.kubectl_run("wait", "-n", self.namespace, "--for=condition=Ready", f"pod/{self.pod}",
                                 "--timeout=180s")
        self._started = True

    def __call__(self, path: str, frame: pd.DataFrame) -> None:
        if not self._started:
            self._start()
        target = Path("/claim") / path
        temporary = target.with_name(f".{target.name}.tmp")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / target.name
            frame.to_parquet(local, index=False)
            self.cluster.kubectl_run("exec", "-n", self.namespace, self.pod, "--", "mkdir", "-p", str(target.parent))
            self.cluster.kubectl_run("cp", str(local), f"{self.namespace}/{self.pod}:{temporary}")
        self.cluster.kubectl_run("exec", "-n", self.namespace, self.pod, "--", "mv", str(temporary), str(target))


def bring_up(cluster: kind.KindCluster, log=print) -> images.ProjectImages:
    """Every image built here, the cluster created from kind-config.yaml, the images loaded where pods run,
    metrics-server, and the chart with its Prometheus on localhost:9090."""
    started = time.monotonic()
    project = images.project_images(log)
    prometheus = kind.prometheus_image(log)
    metrics_server = kind.metrics_server_image(log)
    log(f"[kind] images ready in {time.monotonic() - started:.0f}s")
    cluster.delete(log=log)
    cluster.create(log=log)
    started = time.monotonic()
    workers = [f"{cluster.name}-{w}" for w in WORKERS]
    for image in (project.operator, project.runtime, prometheus, metrics_server):
        cluster.load(image, workers)
    log(f"[kind] images loaded into {', '.join(workers)} in {time.monotonic() - started:.0f}s")
    cluster.install_metrics_server(metrics_server)
    helm = subprocess.run([str(cluster.helm), "upgrade", "--install", RELEASE, str(kind.REPO / "charts" / "mlcycle"),
                           "--namespace", SYSTEM_NAMESPACE, "--create-namespace", "--wait", "--timeout", "180s",
                           *CHART_VALUES, "--kubeconfig", str(cluster.kubeconfig)], capture_output=True, text=True)
    if helm.returncode != 0:
        raise kind.BuildError(f"helm install failed: {helm.stderr.strip()}")
    log(f"[kind] chart installed: the operator runs as Deployment {RELEASE} in {SYSTEM_NAMESPACE}")
    return project

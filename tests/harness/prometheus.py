"""A real Prometheus (Debian's package) on loopback, scraping the targets a test gives it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .cluster import free_port
from .server_process import ServerProcess


@dataclass
class Prometheus(ServerProcess):
    """One Prometheus server; its data, config and log live in `directory`."""

    LOG = "prometheus.log"

    directory: Path
    targets: list[str]
    scrape_interval: str = "1s"
    # With a kubeconfig, also scrape the annotated pods of the process nodes (through the node's loopback
    # forwards: the pods' own addresses are inside network namespaces).
    kubeconfig: Path | None = None
    node_regex: str = "process-node.*"
    port: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed (Debian package 'prometheus'; make system-deps)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": [{"job_name": "mlcycle-test", "static_configs": [{"targets": self.targets}]}],
        }
        if self.kubeconfig is not None:
            config["scrape_configs"].append(self._pods_job())
        (self.directory / "prometheus.yml").write_text(json.dumps(config))
        log = open(self.directory / self.LOG, "ab")  # noqa: SIM115 (kept open for the process)
        self.process = subprocess.Popen(
            [binary, f"--config.file={self.directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.directory / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--storage.tsdb.retention.time=1h", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus was not ready in {timeout}s: {self.log_tail()}")

    def _pods_job(self) -> dict:
        """Debian's Prometheus is built without Kubernetes discovery, so the pods the annotations select are found
        here (as kubernetes_sd_configs with role pod would) and handed over in a file_sd file. The pods' own
        labels (namespace, deployment, version) win over target labels (honor_labels), as the operator's queries
        expect."""
        self._targets_file = self.directory / "pods.json"
        self._targets_file.write_text("[]")
        self._discovery = threading.Thread(target=self._discover, name="prometheus-pod-discovery", daemon=True)
        self._discovery.start()
        return {"job_name": "pods", "honor_labels": True,
                "file_sd_configs": [{"files": [str(self._targets_file)], "refresh_interval": "2s"}]}

    def _discover(self) -> None:
        from kubernetes import client, config

        api = client.CoreV1Api(config.new_client_from_config(str(self.kubeconfig)))
        written = None
        while self.process is None or self.process.poll() is None:
            try:
                targets = self.pod_targets(api.list_pod_for_all_namespaces().items, self.node_regex)
            except Exception:  # the control plane going away at the end of a session
                targets = written
            if targets is not None and targets != written:
                tmp = self._targets_file.with_suffix(".tmp")
                tmp.write_text(json.dumps(targets))
                tmp.rename(self._targets_file)  # Prometheus never reads half a file
                written = targets
            time.sleep(1.0)

    @staticmethod
    def pod_targets(pods, node_regex: str) -> list[dict]:
        """file_sd entries for running pods on matching nodes with prometheus.io/scrape: "true", at the loopback
        address where the process node forwards each pod's ports."""
        from .netns import host_address

        out = []
        for pod in pods:
            notes = pod.metadata.annotations or {}
            if (notes.get("prometheus.io/scrape") != "true" or pod.status.phase != "Running" or not pod.status.pod_ip
                    or not re.fullmatch(node_regex, pod.spec.node_name or "")):
                continue
            out.append({"targets": [f"{host_address(pod.status.pod_ip)}:{notes.get('prometheus.io/port', '80')}"],
                        "labels": {"__metrics_path__": notes.get("prometheus.io/path", "/metrics"),
                                   "pod": pod.metadata.name}})
        return sorted(out, key=lambda t: t["targets"])

    def query(self, promql: str) -> list[dict]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())["data"]["result"]

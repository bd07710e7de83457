"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, controller-manager, scheduler, KWOK.

Every process is started in its own process group, logs to ``<dir>/logs/<name>.log`` and is recorded
with its PID in ``<dir>/state.json``, so a later ``down`` (another process) can stop exactly what an
``up`` started. Fake nodes are KWOK's: pods scheduled to them go Running without running anything.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import pki as pkimod
from .binaries import KWOK_STAGES_FILE

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
POD_CIDR = "10.244.0.1/16"
# KWOK manages only nodes carrying this annotation, so other kinds of node (e.g. one that runs pods
# as local processes) can join the same cluster later.
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
# Written into kube-system when the harness creates a cluster; tests refuse clusters without it.
MARKER_CONFIGMAP = "mlcycle-test-cluster"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


class ClusterError(RuntimeError):
    """The control plane did not come up, with the reason and the tail of the relevant log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kubeconfig(server: str, ca_cert: Path, client_cert: Path, client_key: Path, user: str) -> dict:
    """A self-contained kubeconfig (certificates inlined) for one identity."""

    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "mlcycle-local", "cluster": {
            "server": server, "certificate-authority-data": b64(ca_cert),
        }}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(client_cert), "client-key-data": b64(client_key),
        }}],
        "contexts": [{"name": "mlcycle-local", "context": {"cluster": "mlcycle-local", "user": user}}],
        "current-context": "mlcycle-local",
    }


def fake_node(name: str, *, gpus: int = 0, max_pods: int = 110) -> dict:
    """A KWOK node. GPU nodes carry the usual taint so only pods that ask for a GPU land there."""
    capacity = {"cpu": "16", "memory": "64Gi", "pods": str(max_pods)}
    labels = {
        "type": "kwok",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
    }
    spec: dict = {}
    if gpus:
        capacity["nvidia.com/gpu"] = str(gpus)
        labels["nvidia.com/gpu.present"] = "true"
        spec["taints"] = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": dict([KWOK_NODE_ANNOTATION])},
        "spec": spec,
        "status": {"capacity": capacity, "allocatable": capacity},
    }


@dataclass
class Process:
    name: str
    pid: int
    binary: str
    log: str


@dataclass
class LocalCluster:
    """The control plane's processes and the files that describe it."""

    directory: Path
    binaries: dict[str, Path]
    nodes: int = 2
    gpu_nodes: int = 1
    max_pods: int = 110  # per fake node; benchmarks raise it so thousands of pods can be scheduled
    apiserver_args: list[str] = field(default_factory=list)  # extra flags, e.g. an audit log for a benchmark
    processes: list[Process] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    # ----- layout -------------------------------------------------------------------------------

    @property
    def kubeconfig_path(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def state_path(self) -> Path:
        return self.directory / "state.json"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    def log_path(self, name: str) -> Path:
        return self.directory / "logs" / f"{name}.log"

    # ----- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 120.0, log=print) -> None:
        """Start every component, wait until the cluster schedules pods, and record the state."""
        started = time.monotonic()
        self.directory.mkdir(parents=True, exist_ok=True)
        # Every start is a new cluster: data and logs left by a previous one would only mislead.
        for stale in ("etcd", "logs"):
            shutil.rmtree(self.directory / stale, ignore_errors=True)
        (self.directory / "logs").mkdir()
        self.ports = {name: free_port() for name in ("etcd", "etcd-peer", "apiserver", "controller-manager",
                                                       "scheduler", "kwok")}
        self._pki = pkimod.create(self.directory / "pki", service_ip=SERVICE_IP)
        self._write_kubeconfigs()
        deadline = time.monotonic() + timeout
        try:
            self._start_etcd()
            self._wait("etcd", deadline, self._etcd_healthy)
            self._start_apiserver()
            self._wait("kube-apiserver", deadline, lambda: self._get("/readyz") == "ok")
            self._start_controller_manager()
            self._start_scheduler()
            self._start_kwok()
            self._create_nodes()
            self._create_marker()
            self._wait("kube-controller-manager", deadline,
                        lambda: self._get("/api/v1/namespaces/default/serviceaccounts/default") is not None)
            self._wait("kube-scheduler", deadline, lambda: self._healthz(self.ports["scheduler"]))
            self._wait("kwok", deadline, self._nodes_ready)
        except BaseException:
            # The start-up error is the one worth reporting, not a failure to clean up after it.
            with contextlib.suppress(ClusterError):
                self.stop(log=lambda *_: None)
            raise
        self.timings["start_s"] = time.monotonic() - started
        log(f"[harness] control plane ready in {self.timings['start_s']:.1f}s at {self.server}"
            f" (kubeconfig {self.kubeconfig_path})")

    def stop(self, log=print) -> dict[str, int]:
        """Stop every process this cluster started; return each one's peak RSS in bytes."""
        peaks = self.peak_rss()
        # One at a time, newest first: the API server shuts down gracefully only while etcd is still up.
        for proc in reversed(self.processes):
            _signal_group(proc, signal.SIGTERM)
            if not _wait_exit(proc, timeout=10):
                _signal_group(proc, signal.SIGKILL)
                _wait_exit(proc, timeout=5)
        left = [p.name for p in self.processes if is_running(p)]
        if left:
            raise ClusterError(f"processes still running after SIGKILL: {left}")
        if peaks:
            total = sum(peaks.values())
            parts = ", ".join(f"{name} {rss / 2**20:.0f} MiB" for name, rss in peaks.items())
            log(f"[harness] control plane stopped; peak RSS {total / 2**20:.0f} MiB ({parts})")
        self.processes = []
        self.state_path.unlink(missing_ok=True)
        return peaks

    def peak_rss(self) -> dict[str, int]:
        """Each live component's high-water resident set size (VmHWM), in bytes."""
        peaks = {}
        for proc in self.processes:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peaks[proc.name] = int(line.split()[1]) * 1024
        return peaks

    def log_tails(self, lines: int = 30) -> str:
        out = []
        for name in COMPONENTS:
            path = self.log_path(name)
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"----- {name} ({path}) -----\n" + "\n".join(tail))
        return "\n".join(out)

    # ----- state shared between `up` and `down` -------------------------------------------------

    def save_state(self) -> None:
        state = {
            "directory": str(self.directory),
            "server": self.server,
            "kubeconfig": str(self.kubeconfig_path),
            "ports": self.ports,
            "processes": [vars(p) for p in self.processes],
        }
        self.state_path.write_text(json.dumps(state, indent=2))

    @classmethod
    def from_state(cls, directory: Path) -> LocalCluster | None:
        path = directory / "state.json"
        if not path.exists():
            return None
        state = json.loads(path.read_text())
        cluster = cls(directory=directory, binaries={})
        cluster.ports = state["ports"]
        cluster.processes = [Process(**p) for p in state["processes"]]
        return cluster

    # ----- components ---------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> None:
        binary = str(self.binaries[name])
        log_file = self.log_path(name)
        with open(log_file, "ab") as out:
            popen = subprocess.Popen(
                [binary, *args], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.directory, start_new_session=True,
            )
        self.processes.append(Process(name=name, pid=popen.pid, binary=binary, log=str(log_file)))
        # Written after every start so that `down` finds even a half-started cluster.
        self.save_state()

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        self._spawn("etcd", [
            "--name=default",
            f"--data-dir={self.directory / 'etcd'}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            # A throwaway test store: durability is not worth an fsync per write.
            "--unsafe-no-fsync",
            "--listen-metrics-urls=",
            "--log-level=warn",
        ])

    def _start_apiserver(self) -> None:
        p = self._pki
        cert, key = p.cert("apiserver")
        self._spawn("kube-apiserver", [
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports['apiserver']}",
            f"--tls-cert-file={cert}", f"--tls-private-key-file={key}",
            f"--client-ca-file={p.ca_cert}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p.service_account_pub}",
            f"--service-account-signing-key-file={p.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            # The endpoint reconciler would publish 127.0.0.1 for the `kubernetes` Service, which
            # Endpoints validation rejects; nothing here reaches the API server through that Service.
            "--endpoint-reconciler-type=none",
            f"--cert-dir={self.directory / 'apiserver-certs'}",
            "--profiling=false",
            "--v=1",
            *self.apiserver_args,
        ])

    def _start_controller_manager(self) -> None:
        p = self._pki
        self._spawn("kube-controller-manager", [
            f"--kubeconfig={self.directory / 'controller-manager.kubeconfig'}",
            "--bind-address=127.0.0.1", f"--secure-port={self.ports['controller-manager']}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={p.service_account_key}",
            f"--root-ca-file={p.ca_cert}",
            f"--cluster-signing-cert-file={p.ca_cert}", f"--cluster-signing-key-file={p.ca_key}",
            f"--cert-dir={self.directory / 'controller-manager-certs'}",
            "--profiling=false",
            "--v=1",
        ])

    def _start_scheduler(self) -> None:
        self._spawn("kube-scheduler", [
            f"--kubeconfig={self.directory / 'scheduler.kubeconfig'}",
            "--bind-address=127.0.0.1", f"--secure-port={self.ports['scheduler']}",
            "--leader-elect=false",
            f"--cert-dir={self.directory / 'scheduler-certs'}",
            "--profiling=false",
            "--v=1",
        ])

    def _start_kwok(self) -> None:
        key, value = KWOK_NODE_ANNOTATION
        self._spawn("kwok", [
            f"--kubeconfig={self.kubeconfig_path}",
            f"--config={self.binaries[KWOK_STAGES_FILE]}",
            f"--manage-nodes-with-annotation-selector={key}={value}",
            f"--cidr={POD_CIDR}",
            "--node-ip=10.244.0.1",
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{self.ports['kwok']}",
        ])

    def _write_kubeconfigs(self) -> None:
        p = self._pki
        for file, identity, user in (
            ("kubeconfig", "admin", "mlcycle-admin"),
            ("controller-manager.kubeconfig", "controller-manager", "system:kube-controller-manager"),
            ("scheduler.kubeconfig", "scheduler", "system:kube-scheduler"),
        ):
            cert, key = p.cert(identity)
            config = kubeconfig(self.server, p.ca_cert, cert, key, user)
            path = self.directory / file
            path.write_text(json.dumps(config, indent=2))
            path.chmod(0o600)

    def _create_nodes(self) -> None:
        nodes = [fake_node(f"kwok-node-{i}", max_pods=self.max_pods) for i in range(self.nodes)]
        nodes += [fake_node(f"kwok-gpu-node-{i}", gpus=4) for i in range(self.gpu_nodes)]
        for node in nodes:
            self._request("POST", "/api/v1/nodes", node)

    def _create_marker(self) -> None:
        self._request("POST", "/api/v1/namespaces/kube-system/configmaps", {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": MARKER_CONFIGMAP},
            "data": {"createdBy": "tests/harness", "directory": str(self.directory)},
        })

    # ----- readiness ----------------------------------------------------------------------------

    def _wait(self, name: str, deadline: float, ready) -> None:
        proc = next((p for p in self.processes if p.name == name), None)
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if proc is not None and not is_running(proc):
                raise ClusterError(f"{name} exited during start-up:\n{self._tail(name)}")
            try:
                if ready():
                    return
            except (OSError, ValueError, ClusterError) as err:  # not up yet: keep asking
                last_error = err
            time.sleep(0.2)
        raise ClusterError(f"{name} was not ready in time (last error: {last_error}):\n{self._tail(name)}")

    def _tail(self, name: str, lines: int = 40) -> str:
        path = self.log_path(name)
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"

    def _etcd_healthy(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['etcd']}/health", timeout=2) as resp:
            return json.loads(resp.read()).get("health") == "true"

    def _healthz(self, port: int) -> bool:
        context = ssl.create_default_context()
        # The component serves a self-signed certificate of its own; only liveness is asked here.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=2, context=context) as resp:
            return resp.read().decode() == "ok"

    def _nodes_ready(self) -> bool:
        nodes = json.loads(self._get("/api/v1/nodes") or "{}").get("items", [])
        ready = [
            n for n in nodes
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
        ]
        return len(ready) >= self.nodes + self.gpu_nodes

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self._pki.ca_cert))
        cert, key = self._pki.cert("admin")
        context.load_cert_chain(str(cert), str(key))
        return context

    def _request(self, method: str, path: str, body: dict | None = None) -> str | None:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5, context=self._context()) as resp:
                return resp.read().decode()
        except urllib.error.HTTPError as err:
            if err.code == 404 and method == "GET":
                return None
            raise ClusterError(f"{method} {path}: HTTP {err.code}: {err.read().decode()[:500]}") from err

    def _get(self, path: str) -> str | None:
        return self._request("GET", path)


def is_running(proc: Process) -> bool:
    """True while the PID still belongs to the binary we started (PIDs get reused)."""
    try:
        exe = os.readlink(f"/proc/{proc.pid}/exe")
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return False
    return exe.removesuffix(" (deleted)") == proc.binary


def _signal_group(proc: Process, sig: int) -> None:
    if not is_running(proc):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _wait_exit(proc: Process, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while is_running(proc):
        _reap(proc.pid)
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    _reap(proc.pid)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)

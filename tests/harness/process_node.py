"""A node whose pods run as local processes — only as much of a kubelet as mlcycle's pods need.

Test and demo infrastructure for the local control plane (KWOK fakes every other node). A pod scheduled here
gets a network namespace of its own with an address on the node's bridge (`status.podIP`, 10.245.x.y: the API
server refuses 127/8 in EndpointSlices; see tests/harness/netns.py — nothing is added to the host's own
interfaces, and the host reaches a pod's declared ports on loopback, at `host_address(podIP)`),
its volumes materialised in a directory and bind-mounted at the paths the pod spec names inside a private
mount namespace (ConfigMaps, Secrets, emptyDirs, the projected service-account token, claims bound to hostPath
volumes), its containers' command, args and env run as process groups with the user and read-only root the
security context asks for, readiness and liveness probes honoured, exit codes turned into container states and
pod phase (so Jobs complete), logs kept per container, and the process group killed when the pod is deleted.
The EndpointSlice controller then publishes ready pods, so Services are reached through their EndpointSlices.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from . import netns
from .netns import host_address

__all__ = ["NODE_LABEL", "ProcessNode", "available", "host_address"]

log = logging.getLogger("process-node")

NODE_LABEL = "mlcycle.io/process-node"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
ROOT = Path(__file__).resolve().parents[2]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def available() -> str | None:
    """None when pods can run here; otherwise why not (the e2e tier skips with it)."""
    if sys.platform != "linux":
        return "the process node needs Linux mount namespaces"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "unshare/mount (util-linux) not installed"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"cannot create a mount namespace: {probe.stderr.decode().strip()}"
    if shutil.which("ip") is None or shutil.which("nsenter") is None:
        return "the ip command (iproute2) or nsenter (util-linux) is not installed"
    return netns.available()


@dataclass
class Probe:
    spec: dict[str, Any]
    failures: int = 0
    successes: int = 0
    next_at: float = 0.0


@dataclass
class Container:
    name: str
    spec: dict[str, Any]
    log_path: Path
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: str | None = None
    started_mono: float = 0.0
    exit_code: int | None = None
    finished_at: str | None = None
    restart_at: float = 0.0
    ready: bool = False
    readiness: Probe | None = None
    liveness: Probe | None = None


@dataclass
class PodRun:
    namespace: str
    name: str
    uid: str
    ip: str
    directory: Path
    netns: str
    restart_policy: str
    containers: list[Container] = field(default_factory=list)
    start_time: str = field(default_factory=now)
    status_sent: str = ""
    terminated: bool = False


class ProcessNode:
    """One node; `start()` registers it and runs its pods until `stop()`."""

    def __init__(self, api: client.ApiClient, directory: Path, *, name: str = "process-node-0",
                 python_bin: Path | None = None, cpu: str = "16", memory: str = "64Gi", subnet: int = 0,
                 host_ports: tuple[int, ...] = ()) -> None:
        self.api, self.core = api, client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.directory, self.name = directory, name
        # Pods reach the API server the way in-cluster clients do: KUBERNETES_SERVICE_HOST/PORT, token and CA.
        self.apiserver_port = urllib.parse.urlsplit(api.configuration.host).port or 443
        self.python_bin = python_bin or Path(sys.executable).parent
        self.cpu, self.memory = cpu, memory
        # Host services a pod may call on 127.0.0.1 (e.g. Prometheus), relayed into its namespace with the API
        # server's. `subnet` is a preference: one held by a node of a concurrent run is not taken.
        self.host_ports = (self.apiserver_port, *host_ports)
        self.preferred_subnet = subnet
        self.network: netns.NodeNetwork | None = None
        self._last_host = 1
        self.pods: dict[str, PodRun] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ----- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.network = netns.NodeNetwork(self.preferred_subnet)
        self._register()
        for target in (self._watch_pods, self._supervise, self._heartbeat):
            thread = threading.Thread(target=target, name=f"{self.name}-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for run in self.pods.values():
                self._kill(run, grace=2)
        for thread in self._threads:
            thread.join(timeout=5)
        if self.network is not None:
            self.network.close()

    @property
    def prefix(self) -> str:
        """The first three octets of this node's pod addresses (10.245.<subnet>.)."""
        assert self.network is not None, "start() the node first"
        return self.network.prefix

    def _next_ip(self) -> str:
        """The next of 10.245.<subnet>.2-251 that no pod of this node holds."""
        held = {run.ip for run in self.pods.values()}
        for _ in range(250):
            self._last_host = (self._last_host - 1) % 250 + 2
            address = f"{self.prefix}{self._last_host}"
            if address not in held:
                return address
        raise RuntimeError(f"all 250 pod addresses of {self.prefix}0/24 are held")

    def logs(self, namespace: str, pod: str, container: str | None = None) -> str:
        """A container's log (the first container when none is named), as `kubectl logs` would show it."""
        with self._lock:
            run = next((r for r in self.pods.values() if r.namespace == namespace and r.name == pod), None)
        if run is None:
            return ""
        chosen = next((c for c in run.containers if container in (None, c.name)), None)
        return chosen.log_path.read_text(errors="replace") if chosen and chosen.log_path.exists() else ""

    # ----- the node object ------------------------------------------------------------------------------

    def _register(self) -> None:
        capacity = {"cpu": self.cpu, "memory": self.memory, "pods": "110"}
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.name, "labels": {
                    NODE_LABEL: "true", "kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64"}},
                "spec": {}}
        try:
            self.core.create_node(body)
        except client.ApiException as err:
            if err.status != 409:
                raise
        self.core.patch_node_status(self.name, {"status": {
            "capacity": capacity, "allocatable": capacity,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.name}],
            "nodeInfo": {"kubeletVersion": "process-node", "operatingSystem": "linux", "architecture": "amd64",
                         "containerRuntimeVersion": "process://", "kernelVersion": os.uname().release,
                         "osImage": "local processes", "kubeProxyVersion": "", "machineID": "", "systemUUID": "",
                         "bootID": ""},
            "conditions": self._conditions()}})

    def _conditions(self) -> list[dict[str, Any]]:
        t = now()
        return [{"type": "Ready", "status": "True", "reason": "ProcessNodeReady", "message": "runs pods as processes",
                 "lastHeartbeatTime": t, "lastTransitionTime": t}]

    def _heartbeat(self) -> None:
        """Renew the node Lease and Ready condition, so the node lifecycle controller never evicts our pods."""
        while True:
            try:
                self._beat()
            except Exception as err:  # the API server may be restarting; the next beat retries
                log.warning("heartbeat failed: %s", err)
            if self._stop.wait(10):
                return

    def _beat(self) -> None:
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": 40,
                "renewTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
        try:
            self.coordination.patch_namespaced_lease(self.name, "kube-node-lease", {"spec": spec})
        except client.ApiException as err:
            if err.status != 404:
                raise
            self.coordination.create_namespaced_lease("kube-node-lease", {
                "metadata": {"name": self.name, "namespace": "kube-node-lease"}, "spec": spec})
        self.core.patch_node_status(self.name, {"status": {"conditions": self._conditions()}})

    # ----- pods -----------------------------------------------------------------------------------------

    def _watch_pods(self) -> None:
        selector = f"spec.nodeName={self.name}"
        while not self._stop.is_set():
            try:
                pods = self.core.list_pod_for_all_namespaces(field_selector=selector)
                for pod in pods.items:
                    self._on_pod(self.api.sanitize_for_serialization(pod))
                stream = watch.Watch().stream(self.core.list_pod_for_all_namespaces, field_selector=selector,
                                              resource_version=pods.metadata.resource_version,
                                              timeout_seconds=30)
                for event in stream:
                    if self._stop.is_set():
                        return
                    pod = self.api.sanitize_for_serialization(event["object"])
                    if event["type"] == "DELETED":
                        self._forget(pod["metadata"]["uid"])
                    else:
                        self._on_pod(pod)
            except Exception as err:
                if not self._stop.is_set():
                    log.warning("pod watch restarting: %s", err)
                    time.sleep(1)

    def _on_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        with self._lock:
            run = self.pods.get(uid)
            if meta.get("deletionTimestamp"):
                if run is not None:
                    self._kill(run, grace=int(meta.get("deletionGracePeriodSeconds") or 5))
                self._finalize_delete(meta)
                self._forget(uid)
                return
            if run is None and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
                self._admit(pod)

    def _finalize_delete(self, meta: dict[str, Any]) -> None:
        try:
            self.core.delete_namespaced_pod(meta["name"], meta["namespace"], grace_period_seconds=0,
                                            body=client.V1DeleteOptions(preconditions={"uid": meta["uid"]}))
        except client.ApiException as err:
            if err.status not in (404, 409):
                log.warning("could not delete pod %s: %s", meta["name"], err.reason)

    def _forget(self, uid: str) -> None:
        with self._lock:
            run = self.pods.pop(uid, None)
            if run is not None:
                self._kill(run, grace=1)
                if self.network is not None:
                    self.network.remove_pod(run.ip)

    def _admit(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        assert self.network is not None
        address = self._next_ip()
        run = PodRun(meta["namespace"], meta["name"], meta["uid"], address,
                     self.directory / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}",
                     self.network.pod_ns(address), spec.get("restartPolicy", "Always"))
        run.directory.mkdir(parents=True, exist_ok=True)
        self.pods[run.uid] = run
        ports = [p["containerPort"] for c in spec["containers"] for p in c.get("ports") or []]
        try:
            self.network.add_pod(run.ip, ports, list(self.host_ports))
        except OSError as err:
            self._send_status(run, pod_phase="Pending", message=f"pod network {run.ip}: {err}")
            log.warning("pod %s/%s: %s", run.namespace, run.name, err)
            return
        try:
            volumes = self._materialize_volumes(pod, run)
        except Exception as err:
            self._send_status(run, pod_phase="Pending", message=f"volumes: {err}")
            log.warning("pod %s/%s: %s", run.namespace, run.name, err)
            return
        for c in spec["containers"]:
            container = Container(c["name"], c, run.directory / f"{c['name']}.log")
            container.readiness = Probe(c["readinessProbe"]) if c.get("readinessProbe") else None
            container.liveness = Probe(c["livenessProbe"]) if c.get("livenessProbe") else None
            container.ready = container.readiness is None
            run.containers.append(container)
            self._start_container(pod, run, container, volumes)
        self._report(run)

    # ----- volumes and environment -------------------------------------------------------------------------

    def _materialize_volumes(self, pod: dict[str, Any], run: PodRun) -> dict[str, Path]:
        """Each volume as a host directory (bind-mounted later at the containers' mount paths)."""
        out: dict[str, Path] = {}
        ns = run.namespace
        for volume in pod["spec"].get("volumes") or []:
            path = run.directory / "volumes" / volume["name"]
            path.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                cm = self.core.read_namespaced_config_map(volume["configMap"]["name"], ns)
                self._write_items(path, cm.data or {}, volume["configMap"].get("items"))
            elif "secret" in volume:
                secret = self.core.read_namespaced_secret(volume["secret"]["secretName"], ns)
                data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
                self._write_items(path, data, volume["secret"].get("items"))
            elif "projected" in volume:
                for source in volume["projected"]["sources"]:
                    self._project(pod, source, path)
            elif "persistentVolumeClaim" in volume:
                path = self._claim_path(ns, volume["persistentVolumeClaim"]["claimName"], run)
            elif "emptyDir" not in volume:
                raise ValueError(f"volume {volume['name']}: only configMap, secret, projected, emptyDir and "
                                 "persistentVolumeClaim volumes run on the process node")
            out[volume["name"]] = path
        uid = self._uid(pod)
        if uid is not None:
            for dirpath, _, files in os.walk(run.directory / "volumes"):
                os.chown(dirpath, uid, uid)
                for f in files:
                    os.chown(os.path.join(dirpath, f), uid, uid)
        return out

    @staticmethod
    def _write_items(path: Path, data: dict[str, Any], items: list[dict] | None) -> None:
        keys = {i["key"]: i["path"] for i in items} if items else {k: k for k in data}
        for key, rel in keys.items():
            target = path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            value = data[key]
            target.write_bytes(value if isinstance(value, bytes) else str(value).encode())

    def _project(self, pod: dict[str, Any], source: dict[str, Any], path: Path) -> None:
        ns = pod["metadata"]["namespace"]
        if "serviceAccountToken" in source:
            sat = source["serviceAccountToken"]
            request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
                audiences=[sat["audience"]] if sat.get("audience") else [],
                expiration_seconds=sat.get("expirationSeconds", 3607),
                bound_object_ref=client.V1BoundObjectReference(kind="Pod", api_version="v1",
                                                               name=pod["metadata"]["name"],
                                                               uid=pod["metadata"]["uid"])))
            token = self.core.create_namespaced_service_account_token(
                pod["spec"].get("serviceAccountName", "default"), ns, request)
            (path / sat.get("path", "token")).write_text(token.status.token)
        elif "configMap" in source:
            name = source["configMap"]["name"]
            data = self.core.read_namespaced_config_map(name, ns).data or {}
            self._write_items(path, data, source["configMap"].get("items"))
        elif "downwardAPI" in source:
            for item in source["downwardAPI"].get("items", []):
                value = self._field(pod, item["fieldRef"]["fieldPath"], "") if "fieldRef" in item else ""
                (path / item["path"]).write_text(value)

    def _claim_path(self, namespace: str, claim: str, run: PodRun) -> Path:
        """A claim bound to a hostPath volume is that path; any other claim gets a directory of this node."""
        pvc = self.core.read_namespaced_persistent_volume_claim(claim, namespace)
        if pvc.spec.volume_name:
            pv = self.core.read_persistent_volume(pvc.spec.volume_name)
            if pv.spec.host_path is not None:
                path = Path(pv.spec.host_path.path)
                path.mkdir(parents=True, exist_ok=True)
                os.chmod(path, 0o777)
                return path
        path = self.directory / "claims" / namespace / claim
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o777)
        return path

    def _field(self, pod: dict[str, Any], field_path: str, ip: str) -> str:
        values = {"metadata.name": pod["metadata"]["name"], "metadata.namespace": pod["metadata"]["namespace"],
                  "metadata.uid": pod["metadata"]["uid"], "spec.nodeName": self.name,
                  "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
                  "status.podIP": ip, "status.hostIP": "127.0.0.1"}
        if field_path.startswith("metadata.labels['"):
            return (pod["metadata"].get("labels") or {}).get(field_path[17:-2], "")
        return values.get(field_path, "")

    def _env(self, pod: dict[str, Any], run: PodRun, c: dict[str, Any]) -> dict[str, str]:
        env = {"PATH": f"{self.python_bin}:/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp",
               "HOSTNAME": run.name, "KUBERNETES_SERVICE_HOST": "127.0.0.1",
               "KUBERNETES_SERVICE_PORT": str(self.apiserver_port), "PYTHONUNBUFFERED": "1"}
        ns = run.namespace
        for source in c.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                data = self._optional(lambda s=source: self.core.read_namespaced_config_map(
                    s["configMapRef"]["name"], ns).data, source["configMapRef"])
                env.update({prefix + k: v for k, v in (data or {}).items()})
            elif "secretRef" in source:
                data = self._optional(lambda s=source: self.core.read_namespaced_secret(
                    s["secretRef"]["name"], ns).data, source["secretRef"])
                env.update({prefix + k: base64.b64decode(v).decode() for k, v in (data or {}).items()})
        for var in c.get("env") or []:
            if "value" in var:
                env[var["name"]] = var["value"]
            elif "fieldRef" in var.get("valueFrom", {}):
                env[var["name"]] = self._field(pod, var["valueFrom"]["fieldRef"]["fieldPath"], run.ip)
            elif "configMapKeyRef" in var.get("valueFrom", {}):
                ref = var["valueFrom"]["configMapKeyRef"]
                data = self._optional(lambda r=ref: self.core.read_namespaced_config_map(r["name"], ns).data, ref)
                if data and ref["key"] in data:
                    env[var["name"]] = data[ref["key"]]
            elif "secretKeyRef" in var.get("valueFrom", {}):
                ref = var["valueFrom"]["secretKeyRef"]
                data = self._optional(lambda r=ref: self.core.read_namespaced_secret(r["name"], ns).data, ref)
                if data and ref["key"] in data:
                    env[var["name"]] = base64.b64decode(data[ref["key"]]).decode()
        return env

    @staticmethod
    def _optional(read, ref: dict[str, Any]):
        try:
            return read()
        except client.ApiException as err:
            if err.status == 404 and ref.get("optional"):
                return None
            raise

    @staticmethod
    def _uid(pod: dict[str, Any], c: dict[str, Any] | None = None) -> int | None:
        pod_sc = pod["spec"].get("securityContext") or {}
        sc = (c or {}).get("securityContext") or {}
        return sc.get("runAsUser", pod_sc.get("runAsUser"))

    # ----- processes ------------------------------------------------------------------------------------

    def _start_container(self, pod: dict[str, Any], run: PodRun, container: Container,
                         volumes: dict[str, Path]) -> None:
        c = container.spec
        sc = c.get("securityContext") or {}
        pod_sc = pod["spec"].get("securityContext") or {}
        argv = [*(c.get("command") or []), *(c.get("args") or [])]
        env = self._env(pod, run, c)
        argv = [self._expand(a, env) for a in argv]
        mounts = [{"source": str(volumes[m["name"]] / m.get("subPath", "")).rstrip("/"), "target": m["mountPath"],
                   "readOnly": bool(m.get("readOnly"))}
                  for m in c.get("volumeMounts") or [] if m["name"] in volumes]
        uid = self._uid(pod, c)
        gid = sc.get("runAsGroup", pod_sc.get("runAsGroup", uid))
        plan = {"mounts": mounts, "readOnlyRoot": bool(sc.get("readOnlyRootFilesystem")), "uid": uid, "gid": gid,
                "workingDir": c.get("workingDir") or str(ROOT), "argv": argv, "env": env,
                "expose": [os.path.realpath(sys.base_prefix)],
                "keep": sorted({str(ROOT), os.path.realpath(sys.prefix), str(self.python_bin.parent)})}
        plan_path = run.directory / f"{container.name}.plan.json"
        plan_path.write_text(json.dumps(plan, indent=1))
        logfile = open(container.log_path, "ab")  # noqa: SIM115 — the child owns it; closed below
        container.process = subprocess.Popen(
            ["nsenter", f"--net={netns.NETNS_DIR / run.netns}", "unshare", "--mount", "--propagation", "private",
             sys.executable, "-m", "tests.harness.pod_exec", str(plan_path)],
            stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
            env={**env, "PYTHONPATH": str(ROOT)}, start_new_session=True)
        logfile.close()
        container.started_at, container.started_mono = now(), time.monotonic()
        container.exit_code = container.finished_at = None
        for probe in (container.readiness, container.liveness):
            if probe:
                probe.failures = probe.successes = 0
                probe.next_at = time.monotonic() + probe.spec.get("initialDelaySeconds", 0)
        container.ready = container.readiness is None
        log.info("pod %s/%s container %s started (pid %s, ip %s)", run.namespace, run.name, container.name,
                 container.process.pid, run.ip)

    @staticmethod
    def _expand(arg: str, env: dict[str, str]) -> str:
        for key, value in env.items():
            arg = arg.replace(f"$({key})", value)
        return arg

    def _kill(self, run: PodRun, grace: int) -> None:
        run.terminated = True
        for c in run.containers:
            p = c.process
            if p is None or p.poll() is not None:
                continue
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=max(grace, 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
            except ProcessLookupError:
                pass

    def _supervise(self) -> None:
        while not self._stop.wait(0.25):
            with self._lock:
                runs = [r for r in self.pods.values() if not r.terminated]
            for run in runs:
                try:
                    self._tick(run)
                except Exception as err:
                    log.warning("pod %s/%s: %s", run.namespace, run.name, err)

    def _tick(self, run: PodRun) -> None:
        for c in run.containers:
            p = c.process
            if p is None:
                continue
            code = p.poll()
            if code is not None and c.exit_code is None:
                c.exit_code, c.finished_at, c.ready = code, now(), False
                log.info("pod %s/%s container %s exited %s", run.namespace, run.name, c.name, code)
                if run.restart_policy == "Always" or (run.restart_policy == "OnFailure" and code != 0):
                    c.restart_at = time.monotonic() + min(10.0, 1.0 * 2 ** min(c.restarts, 3))
            if c.exit_code is not None and c.restart_at and time.monotonic() >= c.restart_at:
                c.restarts += 1
                c.restart_at = 0.0
                pod = self.api.sanitize_for_serialization(self.core.read_namespaced_pod(run.name, run.namespace))
                self._start_container(pod, run, c, self._materialize_volumes(pod, run))
                continue
            if c.exit_code is None:
                self._probe(run, c)
        self._report(run)

    def _probe(self, run: PodRun, c: Container) -> None:
        now_mono = time.monotonic()
        for probe, kind in ((c.readiness, "readiness"), (c.liveness, "liveness")):
            if probe is None or now_mono < probe.next_at:
                continue
            probe.next_at = now_mono + probe.spec.get("periodSeconds", 10)
            if self._check(run, c, probe.spec):
                probe.successes, probe.failures = probe.successes + 1, 0
                if kind == "readiness" and probe.successes >= probe.spec.get("successThreshold", 1):
                    c.ready = True
            else:
                probe.failures, probe.successes = probe.failures + 1, 0
                if probe.failures >= probe.spec.get("failureThreshold", 3):
                    if kind == "readiness":
                        c.ready = False
                    else:
                        log.info("pod %s/%s container %s failed liveness; restarting", run.namespace, run.name,
                                 c.name)
                        os.killpg(c.process.pid, signal.SIGKILL)

    def _check(self, run: PodRun, c: Container, spec: dict[str, Any]) -> bool:
        """One probe, from the node's namespace (as a kubelet probes from its node); exec inside the pod's."""
        timeout = spec.get("timeoutSeconds", 1)
        assert self.network is not None
        if "httpGet" in spec:
            get = spec["httpGet"]
            url = f"http://{run.ip}:{self._port(c, get['port'])}{get.get('path', '/')}"
            return self.network.call(self._http_ok, url, timeout)
        if "tcpSocket" in spec:
            return self.network.call(self._tcp_ok, run.ip, self._port(c, spec["tcpSocket"]["port"]), timeout)
        if "exec" in spec:
            return subprocess.run(["nsenter", f"--net={netns.NETNS_DIR / run.netns}", *spec["exec"]["command"]],
                                  capture_output=True, timeout=timeout).returncode == 0
        return True

    @staticmethod
    def _http_ok(url: str, timeout: float) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return 200 <= response.status < 400
        except Exception:
            return False

    @staticmethod
    def _tcp_ok(address: str, port: int, timeout: float) -> bool:
        try:
            with socket.create_connection((address, port), timeout=timeout):
                return True
        except OSError:
            return False

    @staticmethod
    def _port(c: Container, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        return next(p["containerPort"] for p in c.spec.get("ports", []) if p.get("name") == port)

    # ----- status ---------------------------------------------------------------------------------------

    def _report(self, run: PodRun) -> None:
        statuses, phase = [], "Running"
        codes = [c.exit_code for c in run.containers]
        if all(code is not None for code in codes) and not any(c.restart_at for c in run.containers):
            phase = "Succeeded" if all(code == 0 for code in codes) else "Failed"
        for c in run.containers:
            if c.exit_code is None:
                state = {"running": {"startedAt": c.started_at}}
            else:
                state = {"terminated": {"exitCode": c.exit_code, "reason": "Completed" if c.exit_code == 0 else
                                        "Error", "startedAt": c.started_at, "finishedAt": c.finished_at,
                                        "containerID": f"process://{c.process.pid if c.process else 0}"}}
            statuses.append({"name": c.name, "ready": c.ready, "started": c.exit_code is None,
                             "restartCount": c.restarts, "image": c.spec.get("image", ""),
                             "imageID": "", "containerID": f"process://{c.process.pid if c.process else 0}",
                             "state": state})
        self._send_status(run, pod_phase=phase, containers=statuses)

    def _send_status(self, run: PodRun, pod_phase: str, containers: list | None = None, message: str = "") -> None:
        ready = pod_phase == "Running" and bool(containers) and all(s["ready"] for s in containers)
        status = {"phase": pod_phase, "podIP": run.ip, "podIPs": [{"ip": run.ip}], "hostIP": "127.0.0.1",
                  "hostIPs": [{"ip": "127.0.0.1"}], "startTime": run.start_time, "message": message,
                  "containerStatuses": containers or [],
                  "conditions": [{"type": t, "status": "True" if ok else "False"} for t, ok in (
                      ("PodScheduled", True), ("Initialized", True), ("ContainersReady", ready), ("Ready", ready))]}
        digest = json.dumps(status, sort_keys=True)
        if digest == run.status_sent:
            return
        stamped = {**status, "conditions": [{**cond, "lastTransitionTime": now()} for cond in status["conditions"]]}
        try:
            self.core.patch_namespaced_pod_status(run.name, run.namespace, {"status": stamped})
            run.status_sent = digest
            if pod_phase in ("Succeeded", "Failed"):
                run.terminated = True
        except client.ApiException as err:
            if err.status == 404:
                run.terminated = True
            else:
                log.warning("pod %s/%s status: %s", run.namespace, run.name, err.reason)

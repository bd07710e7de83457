"""The process node's pod network: network namespaces the node creates, wired as a CNI bridge plugin would.

A node claims a subnet 10.245.<S>.0/24 (a lock file held for its lifetime, so concurrent test runs on one machine
never share one) and makes a namespace of its own, `mlcycle-pn<S>`, holding a bridge with the gateway 10.245.<S>.1.
Each pod gets a namespace `mlcycle-pn<S>-<n>` with its address on `eth0`, one end of a veth pair whose other end
is on the bridge. Nothing is added to the host's own interfaces: pods reach each other over the bridge, and the
host reaches them only through TCP relays the node runs, on loopback — a pod's port P at 10.245.S.n is forwarded
from 127.245.S.n:P (`host_address`), as `kubectl port-forward` would — while a pod reaches the host's loopback
services it is given (the API server, Prometheus) at 127.0.0.1 inside its own namespace, relayed to the host's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import socket
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

NETNS_DIR = Path("/run/netns")
LOCK_DIR = Path("/run/mlcycle")
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def prefix(subnet: int) -> str:
    """The first three octets of a node's pod addresses (10.245/16 is outside the service range, 10.96/16)."""
    return f"10.245.{subnet}."


def host_address(pod_ip: str) -> str:
    """Where the host reaches a process-node pod's ports: its address with 127 for 10, on loopback."""
    first, rest = pod_ip.split(".", 1)
    if first != "10":
        raise ValueError(f"{pod_ip} is not a process-node pod address")
    return f"127.{rest}"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def enter(name: str) -> None:
    """Move the calling thread (only it: a network namespace is per thread) into the named namespace."""
    fd = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(name: str, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in a short-lived thread inside namespace `name`; a socket it makes stays in that namespace."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            enter(name)
            out["value"] = fn(*args)
        except BaseException as err:  # handed to the caller
            out["error"] = err

    thread = threading.Thread(target=run, name=f"netns-{name}")
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def listener(address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def names() -> list[str]:
    return sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []


def available() -> str | None:
    """None when network namespaces can be made here; otherwise why not."""
    name = f"mlcycle-probe-{os.getpid()}"
    try:
        ip("netns", "add", name)
        try:
            ip("-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
            in_netns(name, socket.socket).close()
        finally:
            ip("netns", "del", name, check=False)
    except OSError as err:
        return f"cannot create network namespaces and veth pairs (needs root and iproute2): {err}"
    return None


class Relays:
    """TCP relays on one asyncio loop: each listens on a socket made in one namespace and, per connection,
    connects to its target from the host's namespace or from `via` (a namespace's thread pool)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="netns-relays", daemon=True)
        self._thread.start()

    def add(self, sock: socket.socket, target: tuple[str, int], via: ThreadPoolExecutor | None = None):
        """Relay connections to `sock` to `target`; returns a handle for `remove`."""
        async def serve():
            return await asyncio.start_server(lambda r, w: self._relay(r, w, target, via), sock=sock)

        return asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10)

    def remove(self, server) -> None:
        self.loop.call_soon_threadsafe(server.close)

    def stop(self) -> None:
        """End every relayed connection, then the loop."""
        async def cancel_all() -> None:
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()

    async def _relay(self, reader, writer, target: tuple[str, int], via: ThreadPoolExecutor | None) -> None:
        upstream = None
        try:
            upstream = socket.socket() if via is None else await self.loop.run_in_executor(via, socket.socket)
            upstream.setblocking(False)
            await asyncio.wait_for(self.loop.sock_connect(upstream, target), 10)
            up_reader, up_writer = await asyncio.open_connection(sock=upstream)
        except (OSError, TimeoutError):  # nothing listens there (yet): the client sees its connection closed
            if upstream is not None:
                upstream.close()
            writer.close()
            return
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            writer.close()


class NodeNetwork:
    """One node's bridge namespace and its pods' namespaces; `close()` removes them all."""

    def __init__(self, preferred_subnet: int = 0) -> None:
        self.subnet, self._lock = self._claim(preferred_subnet)
        self.prefix = prefix(self.subnet)
        self.gateway = f"{self.prefix}1"
        self.node_ns = f"mlcycle-pn{self.subnet}"
        self.relays = Relays()
        self._servers: dict[str, list] = {}
        for stale in self._mine():  # left by a killed run that held this subnet: its lock died with it
            ip("netns", "del", stale, check=False)
        ip("netns", "add", self.node_ns)
        ip("-n", self.node_ns, "link", "set", "lo", "up")
        ip("-n", self.node_ns, "link", "add", "br0", "type", "bridge")
        ip("-n", self.node_ns, "addr", "add", f"{self.gateway}/24", "dev", "br0")
        ip("-n", self.node_ns, "link", "set", "br0", "up")
        # Connections from the host to pods start here, as a kubelet's probes start on its node.
        self.node = ThreadPoolExecutor(4, thread_name_prefix=self.node_ns, initializer=enter,
                                       initargs=(self.node_ns,))

    @staticmethod
    def _claim(preferred: int) -> tuple[int, int]:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        for subnet in [preferred, *(s for s in range(256) if s != preferred)]:
            fd = os.open(LOCK_DIR / f"process-node-subnet-{subnet}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return subnet, fd
            except BlockingIOError:
                os.close(fd)
        raise RuntimeError("every process-node subnet 10.245.0-255.0/24 is held by a running node")

    def _mine(self) -> list[str]:
        return [n for n in names() if n == self.node_ns or n.startswith(f"{self.node_ns}-")]

    def pod_ns(self, pod_ip: str) -> str:
        return f"{self.node_ns}-{pod_ip.rsplit('.', 1)[1]}"

    def add_pod(self, pod_ip: str, ports: list[int], host_ports: list[int]) -> str:
        """A namespace with `pod_ip` on the bridge; its `ports` forwarded from the host's loopback, the host's
        `host_ports` relayed to 127.0.0.1 inside it. Returns the namespace's name."""
        ns, n = self.pod_ns(pod_ip), pod_ip.rsplit(".", 1)[1]
        self.remove_pod(pod_ip)
        ip("netns", "add", ns)
        ip("-n", self.node_ns, "link", "add", f"v{n}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("-n", self.node_ns, "link", "set", f"v{n}", "master", "br0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "addr", "add", f"{pod_ip}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "route", "add", "default", "via", self.gateway)
        servers = self._servers[pod_ip] = []
        for port in sorted(set(ports)):
            servers.append(self.relays.add(listener(host_address(pod_ip), port), (pod_ip, port), via=self.node))
        for port in sorted(set(host_ports)):
            servers.append(self.relays.add(in_netns(ns, listener, "127.0.0.1", port), ("127.0.0.1", port)))
        return ns

    def remove_pod(self, pod_ip: str) -> None:
        for server in self._servers.pop(pod_ip, []):
            self.relays.remove(server)
        # Deleting either end of a veth deletes both, even while a straggler process keeps the namespace alive.
        ip("-n", self.node_ns, "link", "del", f"v{pod_ip.rsplit('.', 1)[1]}", check=False)
        ip("netns", "del", self.pod_ns(pod_ip), check=False)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) from the node's namespace, where every pod address is reachable."""
        return self.node.submit(fn, *args).result()

    def close(self) -> None:
        for pod_ip in list(self._servers):
            self.remove_pod(pod_ip)
        self.relays.stop()
        self.node.shutdown(wait=False)
        for name in self._mine():
            ip("netns", "del", name, check=False)
        with contextlib.suppress(OSError):
            os.close(self._lock)

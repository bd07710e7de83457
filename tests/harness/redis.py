"""A real redis-server (Debian's package) on loopback, without persistence, for Feast's Redis online store."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .cluster import free_port
from .server_process import ServerProcess


@dataclass
class Redis(ServerProcess):
    """One redis-server; its working directory and log live in `directory`."""

    LOG = "redis.log"

    directory: Path
    port: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """host:port, as Feast's `connection_string` wants it."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian package 'redis-server'; make system-deps)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log = open(self.directory / self.LOG, "ab")  # noqa: SIM115 (kept open for the process)
        # No RDB snapshots and no AOF: a test's data must die with the server, and disk writes only cost time.
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no",
             "--logfile", ""],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_tail()}")
            if self.ping():
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server was not ready in {timeout}s: {self.log_tail()}")

    def ping(self) -> bool:
        """True when the server answers PING (spoken in RESP directly: the harness needs no client library)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

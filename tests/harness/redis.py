"""A real redis-server (Debian's package) on loopback, without persistence, for Feast's Redis online store."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .cluster import free_port


@dataclass
class Redis:
    """One redis-server; its working directory and log live in `directory`."""

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
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 (kept open for the process)
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

    def log_tail(self, lines: int = 20) -> str:
        path = self.directory / "redis.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

"""What the harness's single-process servers (Prometheus, Redis, moto's S3) share: a log in their directory and a
polite stop. And an HTTP server of the runtime's (the model server, stock `bentoml serve`) as a process of a test
or a bench: started in its own process group with its output in a log, ready when `/readyz` answers, stopped as a
group (`start_http`, `stop_group`)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx


class ServerProcess:
    """Mixin for a dataclass with `directory: Path` and `process: subprocess.Popen | None`; LOG names its log."""

    LOG = "server.log"
    directory: Path
    process: subprocess.Popen | None

    def log_tail(self, lines: int = 20) -> str:
        path = self.directory / self.LOG
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; nothing when it is not running."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


class NotReady(RuntimeError):
    """The server exited, or did not answer /readyz in time; the message ends with its log's tail."""


def start_http(argv: list[str], env: dict[str, str], url: str, log: Path, timeout: float = 120.0) -> subprocess.Popen:
    """Start `argv` and wait until GET `url`/readyz answers 200."""
    with log.open("w") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise NotReady(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    stop_group(process)
    raise NotReady(f"the server was not ready within {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def stop_group(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM to the server's process group (BentoML's arbiter and its workers), SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

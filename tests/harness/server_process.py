"""What the harness's single-process servers (Prometheus, Redis, moto's S3) share: a log in their directory and a
polite stop."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path


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

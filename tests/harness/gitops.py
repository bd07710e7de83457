"""What Argo CD or Flux does with a directory of manifests, for the loop on a real cluster: server-side apply under
a field manager of its own, and again every few seconds whether or not anything changed.

The loop must neither need a second apply nor be disturbed by one, and the operator must never write a field the
user owns: after the loop, `kubectl diff --server-side` of the same manifests under the same manager is empty.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import yaml

MANAGER = "gitops"  # the field manager the resources are applied under, as Argo CD's "argocd-controller"


class GitOps:
    """The manifests `add`ed so far, applied at once and then re-applied every `every` seconds from a thread;
    `kubectl(*args, input=...)` runs the cluster's kubectl and returns the CompletedProcess."""

    def __init__(self, kubectl: Callable[..., subprocess.CompletedProcess], namespace: str, every: float = 5.0):
        self.kubectl, self.namespace, self.every = kubectl, namespace, every
        self.manifests: list[dict[str, Any]] = []
        self.applies = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _document(self) -> str:
        with self._lock:
            return yaml.safe_dump_all(self.manifests)

    def _apply(self, document: str) -> subprocess.CompletedProcess:
        return self.kubectl("apply", "--server-side", f"--field-manager={MANAGER}", "-n", self.namespace, "-f", "-",
                            input=document)

    def add(self, manifest: dict[str, Any]) -> None:
        """Commit a manifest to the repository: applied now (a refusal raises), re-applied from then on."""
        with self._lock:
            self.manifests.append(manifest)
        done = self._apply(yaml.safe_dump(manifest))
        if done.returncode != 0:
            raise RuntimeError(f"applying {manifest['kind']} {manifest['metadata']['name']}: {done.stderr.strip()}")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gitops", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            document = self._document()
            if not document.strip() or document.strip() == "[]":
                continue
            done = self._apply(document)
            if done.returncode != 0:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {done.stderr.strip()[:500]}")
            else:
                self.applies += 1

    def diff(self) -> str:
        """`kubectl diff --server-side` of every manifest: what a sync would change now (empty: nothing)."""
        done = self.kubectl("diff", "--server-side", f"--field-manager={MANAGER}", "-n", self.namespace, "-f", "-",
                            input=self._document())
        if done.returncode not in (0, 1):  # 1: differences found; anything else: kubectl failed
            raise RuntimeError(f"kubectl diff failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

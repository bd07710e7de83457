"""How a workload reports back: a merge patch of its own resource's status in a cluster, a JSON file alone.

In a pod (KUBERNETES_SERVICE_HOST set) the report goes to `status.<statusField>` of the TrainingJob,
DriftMonitor or BatchPrediction named in the config, with the workload ServiceAccount's token — the only write it
is allowed.
Run alone, each report replaces `<dir>/<kind>-<name>.json` (MLCYCLE_REPORT_DIR, default the working
directory), so a person or a test reads the same document the operator would.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GROUP = "mlcycle.io"
VERSION = "v1alpha1"
PLURALS = {"TrainingJob": "trainingjobs", "DriftMonitor": "driftmonitors", "BatchPrediction": "batchpredictions"}
REPORT_DIR_ENV = "MLCYCLE_REPORT_DIR"


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


class Reporter:
    """Writes reports for one resource; `send` never raises for a transient API error (it logs and goes on)."""

    def __init__(self, kind: str, name: str, namespace: str, status_field: str,
                 report_dir: str | Path | None = None, cluster: bool | None = None) -> None:
        if kind not in PLURALS:
            raise ValueError(f"no status report for kind {kind}")
        self.kind, self.name, self.namespace, self.status_field = kind, name, namespace, status_field
        self.cluster = in_cluster() if cluster is None else cluster
        self.path = Path(report_dir or os.environ.get(REPORT_DIR_ENV, ".")) / f"{kind.lower()}-{name}.json"
        self._api = None
        self.last: dict[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Ray Tune pickles its callbacks (which report progress): the API client's sockets stay behind and are
        # opened again on the next send.
        return {**self.__dict__, "_api": None}

    def _custom_objects(self):
        if self._api is None:
            from kubernetes import client, config

            config.load_incluster_config()
            self._api = client.CustomObjectsApi()
        return self._api

    def send(self, report: dict[str, Any], *, required: bool = False) -> bool:
        """Deliver one report; True when it arrived. With required=True an API error is raised instead."""
        self.last = report
        if not self.cluster:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
            tmp.replace(self.path)
            return True
        from kubernetes.client.exceptions import ApiException

        body = {"status": {self.status_field: report}}
        try:
            self._custom_objects().patch_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, PLURALS[self.kind], self.name, body)
            return True
        except ApiException as err:
            if required:
                raise
            log.warning("could not report to %s/%s: %s %s", self.kind, self.name, err.status, err.reason)
            return False


def report_bad_config(kind: str, path: str, reason: str, default_field: str) -> None:
    """A config that does not validate may still name its resource: report Failed there, so the operator sees
    why (nothing named: the one-line reason on stderr is all there is)."""
    try:
        raw = json.loads(Path(path).read_text())
        name, namespace = raw["name"], raw.get("namespace", "default")
        field = (raw.get("report") or {}).get("statusField", default_field)
        if not isinstance(name, str) or not isinstance(namespace, str) or not isinstance(field, str):
            return
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    Reporter(kind, name, namespace, field).send({"phase": "Failed", "error": reason})

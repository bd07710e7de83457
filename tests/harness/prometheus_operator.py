"""The Prometheus Operator's ServiceMonitor and PrometheusRule CRDs, taken from its pinned Go module and cached
outside the repo. The integration tests install them so that the operator's optional monitoring children meet
the schemas a real Prometheus Operator serves (fetched by gomodule.module_files)."""

from __future__ import annotations

import sys
from pathlib import Path

from .binaries import BuildError
from .gomodule import module_files

MODULE = "github.com/prometheus-operator/prometheus-operator"
VERSION = "v0.94.0"
# `go mod download -json` reports this as "Sum"; a different module zip is refused.
MODULE_SUM = "h1:VxMKzqr8Xqw5/QInNT7a3B5XInPnHqE7SD2UIdwKpRM="
CRDS = ["example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
        "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml"]


def crd_paths(log=print) -> list[Path]:
    """The ServiceMonitor and PrometheusRule CRDs of `VERSION`; BuildError if they cannot be fetched."""
    return module_files(MODULE, VERSION, MODULE_SUM, CRDS, f"prometheus-operator/{VERSION}",
                        "the Prometheus Operator's CRDs", log=log)


def main() -> int:
    try:
        for path in crd_paths():
            print(f"  {path.name.split('_')[1].removesuffix('.yaml') + ' CRD':24} {path}")
    except BuildError as err:
        print(f"[harness] {err}", file=sys.stderr)
        return 1
    return 0

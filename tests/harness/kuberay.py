"""KubeRay's RayJob CRD, taken from the pinned ray-operator Go module and cached outside the repo.

The integration tests install it so that the operator's RayJob path meets the schema the real KubeRay
serves (fetched by gomodule.module_files).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .binaries import BuildError
from .gomodule import module_files

MODULE = "github.com/ray-project/kuberay/ray-operator"
VERSION = "v1.5.0"
# `go mod download -json` reports this as "Sum"; a different module zip is refused.
MODULE_SUM = "h1:KCjCQ7PSsvs9Ke+90CZbbs498nuaIJ/JkXk4vd54EVg="
RAYJOB_CRD = "config/crd/bases/ray.io_rayjobs.yaml"


def crd_path(log=print) -> Path:
    """The RayJob CRD of KubeRay `VERSION`, fetched once through the Go module proxy; BuildError if it cannot be."""
    [path] = module_files(MODULE, VERSION, MODULE_SUM, [RAYJOB_CRD], f"kuberay/ray-operator-{VERSION}",
                          "KubeRay's CRDs", log=log)
    return path


def main() -> int:
    try:
        print(f"  {'rayjobs CRD':24} {crd_path()}")
    except BuildError as err:
        print(f"[harness] {err}", file=sys.stderr)
        return 1
    return 0

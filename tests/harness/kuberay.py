"""KubeRay's RayJob CRD, taken from the pinned ray-operator Go module and cached outside the repo.

The integration tests install it so that the operator's RayJob path meets the schema the real KubeRay
serves. Only the YAML file is needed (no build): ``go mod download`` fetches the module from the Go module
proxy, the hash is checked against the one pinned here (the checksum database is not reachable from every
machine), and the file is copied to ``$MLCYCLE_CACHE/kuberay/ray-operator-<version>/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .binaries import BuildError, cache_root

MODULE = "github.com/ray-project/kuberay/ray-operator"
VERSION = "v1.5.0"
# `go mod download -json` reports this as "Sum"; a different module zip is refused.
MODULE_SUM = "h1:KCjCQ7PSsvs9Ke+90CZbbs498nuaIJ/JkXk4vd54EVg="
RAYJOB_CRD = "config/crd/bases/ray.io_rayjobs.yaml"


def crd_path(log=print) -> Path:
    """The RayJob CRD of KubeRay `VERSION`, fetched once through the Go module proxy; BuildError if it cannot be."""
    target = cache_root() / "kuberay" / f"ray-operator-{VERSION}" / Path(RAYJOB_CRD).name
    if target.exists():
        return target
    go = shutil.which("go")
    if go is None:
        raise BuildError("the Go toolchain ('go') is not on PATH; it fetches KubeRay's CRDs from the module proxy")
    log(f"[harness] fetching {MODULE}@{VERSION} for its RayJob CRD")
    # GOSUMDB=off because the hash is pinned above; -mod=mod lets `go mod download` run outside any module.
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOSUMDB": "off"}
    with tempfile.TemporaryDirectory() as empty:  # no go.mod around, so nothing else gets resolved
        proc = subprocess.run([go, "mod", "download", "-json", f"{MODULE}@{VERSION}"], cwd=empty, env=env,
                              capture_output=True, text=True)
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError:
        info = {}
    if proc.returncode != 0 or info.get("Error") or "Dir" not in info:
        raise BuildError(f"go mod download {MODULE}@{VERSION} failed: {info.get('Error') or proc.stderr.strip()}")
    if info.get("Sum") != MODULE_SUM:
        raise BuildError(f"{MODULE}@{VERSION} has hash {info.get('Sum')}, expected {MODULE_SUM}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}")
    shutil.copyfile(Path(info["Dir"]) / RAYJOB_CRD, staging)
    staging.rename(target)  # atomic: a concurrent reader sees the whole file or none
    return target


def main() -> int:
    try:
        print(f"  {'rayjobs CRD':24} {crd_path()}")
    except BuildError as err:
        print(f"[harness] {err}", file=sys.stderr)
        return 1
    return 0

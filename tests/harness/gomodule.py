"""Files from a pinned Go module (CRDs of operators mlcycle meets), fetched once through the Go module proxy
and cached outside the repo.

Only the files are needed (no build): ``go mod download`` fetches the module, its hash is checked against the
one pinned by the caller (the checksum database is not reachable from every machine), and the files are copied
to ``$MLCYCLE_CACHE/<cache>/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .binaries import BuildError, cache_root


def module_files(module: str, version: str, module_sum: str, files: list[str], cache: str, why: str,
                 log=print) -> list[Path]:
    """`files` (paths inside the module) of `module`@`version`, fetched once; BuildError if they cannot be."""
    targets = [cache_root() / cache / Path(f).name for f in files]
    if all(t.exists() for t in targets):
        return targets
    go = shutil.which("go")
    if go is None:
        raise BuildError(f"the Go toolchain ('go') is not on PATH; it fetches {why} from the module proxy")
    log(f"[harness] fetching {module}@{version} for {why}")
    # GOSUMDB=off because the hash is pinned by the caller; -mod=mod lets `go mod download` run outside a module.
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOSUMDB": "off"}
    with tempfile.TemporaryDirectory() as empty:  # no go.mod around, so nothing else gets resolved
        proc = subprocess.run([go, "mod", "download", "-json", f"{module}@{version}"], cwd=empty, env=env,
                              capture_output=True, text=True)
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError:
        info = {}
    if proc.returncode != 0 or info.get("Error") or "Dir" not in info:
        raise BuildError(f"go mod download {module}@{version} failed: {info.get('Error') or proc.stderr.strip()}")
    if info.get("Sum") != module_sum:
        raise BuildError(f"{module}@{version} has hash {info.get('Sum')}, expected {module_sum}")
    for source, target in zip(files, targets, strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.copyfile(Path(info["Dir"]) / source, staging)
        staging.rename(target)  # atomic: a concurrent reader sees the whole file or none
    return targets

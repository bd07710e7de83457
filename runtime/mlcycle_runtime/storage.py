"""Model versions in the project's storage, through fsspec: `<storage>/<project>/models/<name>/<version>/`.

A version directory holds `model.json` (the model card: schema, metrics, lineage), `reference.json` (the
reference histograms the router and drift monitor use), `model.bentomodel` (the BentoML export) and, written
last, `_COMPLETE`. Versions are immutable: `publish` refuses a directory that already holds anything, and a
reader refuses one without `_COMPLETE` (a job that died half-way never looks like a model).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import fsspec

COMPLETE = "_COMPLETE"
MODEL_CARD = "model.json"
REFERENCE = "reference.json"
BENTO_EXPORT = "model.bentomodel"

# pvc://<claim>/<path> is mounted at <root>/<claim>/<path> in workload pods (runtime contract); the local
# process node and tests point the root elsewhere.
PVC_ROOT_ENV = "MLCYCLE_PVC_ROOT"
DEFAULT_PVC_ROOT = "/mnt/pvc"


class StorageError(Exception):
    """A storage operation that cannot be done as asked; the message says why, in words."""


class VersionExists(StorageError):
    pass


class VersionNotFound(StorageError):
    pass


def resolve(uri: str) -> str:
    """The fsspec URL for a storage URI (`pvc://` becomes a local path under the claim's mount)."""
    if uri.startswith("pvc://"):
        root = os.environ.get(PVC_ROOT_ENV, DEFAULT_PVC_ROOT)
        return "file://" + str(Path(root) / uri.removeprefix("pvc://"))
    if "://" not in uri:
        return "file://" + str(Path(uri).resolve())
    return uri


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def version_uri(storage_uri: str, model_path: str, version: str) -> str:
    """Where a version is exported, as a storage URI (the form that goes into status)."""
    return join(storage_uri, model_path, version)


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(resolve(uri))
    return fs, path


def publish(local_dir: str | Path, uri: str) -> None:
    """Copy a finished version directory to `uri`, marking it complete last; never overwrites a version."""
    fs, path = _fs(uri)
    if fs.exists(path) and fs.ls(path):
        raise VersionExists(f"model version {uri} already exists; versions are immutable")
    fs.makedirs(path, exist_ok=True)
    files = sorted(p for p in Path(local_dir).iterdir() if p.is_file() and p.name != COMPLETE)
    for file in files:
        fs.put_file(str(file), f"{path}/{file.name}")
    with fs.open(f"{path}/{COMPLETE}", "w") as marker:
        marker.write("\n".join(f.name for f in files) + "\n")


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.exists(f"{path}/{COMPLETE}")


def _require_complete(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = _fs(uri)
    if not fs.exists(f"{path}/{COMPLETE}"):
        state = "is incomplete (its job did not finish)" if fs.exists(path) else "does not exist"
        raise VersionNotFound(f"model version {uri} {state}")
    return fs, path


def read_json(uri: str, name: str) -> dict[str, Any]:
    """One JSON file of a complete version (`model.json`, `reference.json`)."""
    fs, path = _require_complete(uri)
    try:
        with fs.open(f"{path}/{name}") as f:
            return json.load(f)
    except FileNotFoundError:
        raise VersionNotFound(f"model version {uri} has no {name}") from None


def fetch(uri: str, dest: str | Path) -> Path:
    """Copy a complete version to a local directory and return it."""
    fs, path = _require_complete(uri)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for entry in fs.ls(path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        fs.get_file(entry, str(dest / name))
    return dest

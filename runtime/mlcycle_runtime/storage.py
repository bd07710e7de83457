"""Model versions in the project's storage, through fsspec: `<storage>/<project>/models/<name>/<version>/`.

A version directory holds `model.json` (the model card: schema, metrics, lineage), `reference.json` (the
reference histograms the router and drift monitor use), `model.bentomodel` (the BentoML export) and, written
last, `_COMPLETE`. Versions are immutable: `publish` refuses a directory that already holds anything, and a
reader refuses one without `_COMPLETE` (a job that died half-way never looks like a model).

`s3://<bucket>/<prefix>` goes through s3fs and botocore: credentials from the standard AWS variables (or the pod's
role), the endpoint of an S3-compatible store (MinIO, moto) from `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
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

# botocore's own variables for an S3-compatible endpoint, most specific first (its order of precedence).
S3_ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


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


def _is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def s3_endpoint() -> str | None:
    """The S3 endpoint the environment names (None: botocore's default, AWS or the AWS config file)."""
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return None
    return next((os.environ[name] for name in S3_ENDPOINT_ENVS if os.environ.get(name)), None)


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and path of a storage URI (for data: batch inputs and outputs)."""
    return _fs(uri)


def bucket_missing(fs: fsspec.AbstractFileSystem, path: str, uri: str) -> str | None:
    """On S3, why nothing can be written under `uri`: its bucket does not exist; None otherwise."""
    return _bucket_missing(fs, path, uri)


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    url = resolve(uri)
    options: dict[str, Any] = {}
    if _is_s3(url):
        # No listings cache: versions are completed by other processes, and a cached listing would hide their
        # `_COMPLETE` from a poller for good. botocore reads the endpoint variables itself; passing the endpoint
        # also keys fsspec's filesystem cache on it, so a process whose environment changes is not given a
        # filesystem for the old endpoint.
        options["use_listings_cache"] = False
        if endpoint := s3_endpoint():
            options["endpoint_url"] = endpoint
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path


def _is_s3_failure(err: Exception) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    # s3fs turns most S3 error responses into OSError (PermissionError, FileNotFoundError); the rest are botocore's.
    return isinstance(err, OSError | BotoCoreError | ClientError)


@contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    """On s3://, turn the S3 client's errors (endpoint down, bad credentials, access denied) into a StorageError."""
    try:
        yield
    except StorageError:
        raise
    except Exception as err:
        if not (_is_s3(uri) and _is_s3_failure(err)):
            raise
        reason = " ".join(str(err).split()) or type(err).__name__
        raise StorageError(f"cannot use {uri} at S3 endpoint {s3_endpoint() or 'AWS (default)'}: "
                           f"{type(err).__name__}: {reason}") from None


def _entries(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    """What a version directory holds; on S3 a folder's zero-byte marker object (`<prefix>/`) is not content."""
    marker = path.rstrip("/") + "/"
    return [e for e in fs.ls(path, detail=False) if e != marker]


def _bucket_missing(fs: fsspec.AbstractFileSystem, path: str, uri: str) -> str | None:
    """On S3, why `uri` cannot be there at all: its bucket does not exist (or these credentials cannot see it)."""
    if not _is_s3(uri):
        return None
    bucket = path.split("/", 1)[0]
    if fs.exists(bucket):
        return None
    return (f"bucket {bucket!r} does not exist at S3 endpoint {s3_endpoint() or 'AWS (default)'} "
            "(or these credentials cannot see it)")


def publish(local_dir: str | Path, uri: str) -> None:
    """Copy a finished version directory to `uri`, marking it complete last; never overwrites a version."""
    with _s3_errors(uri):
        fs, path = _fs(uri)
        if fs.exists(path) and _entries(fs, path):
            raise VersionExists(f"model version {uri} already exists; versions are immutable")
        if _is_s3(uri):
            # S3 has no directories to make, and s3fs's makedirs would create a missing (mistyped) bucket.
            if missing := _bucket_missing(fs, path, uri):
                raise StorageError(f"cannot publish model version {uri}: {missing}")
        else:
            fs.makedirs(path, exist_ok=True)
        files = sorted(p for p in Path(local_dir).iterdir() if p.is_file() and p.name != COMPLETE)
        # One PUT per file, in order: S3 reads are strongly consistent after a PUT returns, so a reader that
        # sees `_COMPLETE` sees every file before it.
        for file in files:
            fs.put_file(str(file), f"{path}/{file.name}")
        with fs.open(f"{path}/{COMPLETE}", "w") as marker:
            marker.write("\n".join(f.name for f in files) + "\n")


def put_file(local: str | Path, uri: str) -> None:
    """Copy one finished file to `uri` so that no reader sees it half-written: on S3 one PUT (an object appears
    whole), elsewhere a dot-named copy beside the target renamed into place."""
    with _s3_errors(uri):
        fs, path = _fs(uri)
        if _is_s3(uri):
            fs.put_file(str(local), path)
            return
        parent, name = path.rsplit("/", 1)
        fs.makedirs(parent, exist_ok=True)
        partial = f"{parent}/.{name}.partial"
        fs.put_file(str(local), partial)
        fs.mv(partial, path)


def exists(uri: str) -> bool:
    with _s3_errors(uri):
        fs, path = _fs(uri)
        return fs.exists(f"{path}/{COMPLETE}")


def _require_complete(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = _fs(uri)
    if not fs.exists(f"{path}/{COMPLETE}"):
        if fs.exists(path):
            state = "is incomplete (its job did not finish)"
        elif missing := _bucket_missing(fs, path, uri):
            state = f"does not exist: {missing}"
        else:
            state = "does not exist"
        raise VersionNotFound(f"model version {uri} {state}")
    return fs, path


def read_json(uri: str, name: str) -> dict[str, Any]:
    """One JSON file of a complete version (`model.json`, `reference.json`)."""
    with _s3_errors(uri):
        fs, path = _require_complete(uri)
        try:
            with fs.open(f"{path}/{name}") as f:
                return json.load(f)
        except FileNotFoundError:
            raise VersionNotFound(f"model version {uri} has no {name}") from None


def fetch(uri: str, dest: str | Path) -> Path:
    """Copy a complete version to a local directory and return it."""
    with _s3_errors(uri):
        fs, path = _require_complete(uri)
        entries = _entries(fs, path)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with _s3_errors(uri):
        for entry in entries:
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            fs.get_file(entry, str(dest / name))
    return dest

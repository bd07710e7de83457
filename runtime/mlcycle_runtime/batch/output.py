"""A run's output directory, `<output>/<runId>/`: complete or absent, never overwritten.

On a filesystem (file://, pvc://) the parts are written into a hidden sibling `.<runId>.incomplete/` and renamed
into place at the end, one atomic step; on S3, which has no rename, they are written in place and `_COMPLETE` is
written last (readers refuse a directory without it, as they refuse a model version without it), and a run that
fails removes what it wrote.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

from mlcycle_runtime import storage

# Readers of the run directory (pyarrow, pandas, Spark) skip names that start with "_": reading the run reads the
# scored rows only.
INVALID_DIR = "_invalid"


class HashingFile(io.RawIOBase):
    """A writable file that hashes what goes through it: the fingerprint costs no second read of the output."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner, self.digest, self.size = inner, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self.size += view.nbytes
        self.inner.write(view)
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        if not self.closed:
            self.inner.close()
        super().close()


class RunOutput:
    """Where one run writes its parts, and the step that makes them visible."""

    def __init__(self, base_uri: str, run_id: str) -> None:
        self.uri = storage.join(base_uri, run_id)
        self.fs, self.final = storage.filesystem(self.uri)
        if self.fs.exists(self.final):
            raise storage.VersionExists(f"output {self.uri} already exists; a run never overwrites another's output")
        self.local = "file" in self.fs.protocol
        if self.local:
            parent, name = self.final.rstrip("/").rsplit("/", 1)
            self.staging = f"{parent}/.{name}.incomplete"
            self.fs.makedirs(self.staging, exist_ok=True)
        else:
            if missing := storage.bucket_missing(self.fs, self.final, self.uri):
                raise storage.StorageError(f"cannot write {self.uri}: {missing}")
            self.staging = self.final
        self.written: list[str] = []
        self.hashes: dict[str, str] = {}

    def open(self, name: str) -> HashingFile:
        """A new file of the run (`part-00000.parquet`, `_invalid/part-00000.parquet`)."""
        path = f"{self.staging}/{name}"
        if "/" in name:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self.written.append(name)
        return HashingFile(self.fs.open(path, "wb"))

    def closed(self, name: str, file: HashingFile) -> None:
        """Record a part's hash once its writer has closed it."""
        self.hashes[name] = file.digest.hexdigest()

    def fingerprint(self, names: list[str]) -> str:
        """sha256 over the named parts' own hashes, in name order: the same files give the same fingerprint."""
        digest = hashlib.sha256()
        for name in sorted(names):
            digest.update(f"{name}:{self.hashes[name]}\n".encode())
        return "sha256:" + digest.hexdigest()

    def publish(self) -> None:
        with self.fs.open(f"{self.staging}/{storage.COMPLETE}", "w") as marker:
            marker.write("\n".join(sorted(self.written)) + "\n")
        if self.local:
            os.rename(self.staging, self.final)  # atomic; refuses a directory that appeared meanwhile

    def abandon(self) -> None:
        """Remove what the run wrote: a failed run leaves no output, complete or not."""
        if self.fs.exists(self.staging):
            self.fs.rm(self.staging, recursive=True)

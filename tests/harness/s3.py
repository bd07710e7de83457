"""A real S3 API on loopback: moto's server (`python -m moto.server`) as a separate process, for s3:// storage."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .cluster import free_port
from .server_process import ServerProcess

# moto accepts any credentials; these only have to be present, since botocore refuses to sign without any.
ACCESS_KEY = "mlcycle-test"
SECRET_KEY = "mlcycle-test-secret"
REGION = "us-east-1"


def missing() -> str | None:
    """Why the server cannot run here (moto[server] not installed), or None."""
    for module in ("moto.server", "flask", "boto3", "s3fs"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"python module {module} is not installed (moto[server] and s3fs are in requirements/dev.lock)"
    return None


@dataclass
class MotoS3(ServerProcess):
    """One moto server; its log lives in `directory`. Its state is in memory and dies with it."""

    LOG = "moto.log"

    directory: Path
    port: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point an S3 client (botocore, s3fs) at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION,
                # A developer's ~/.aws must not redirect or sign the tests' requests.
                "AWS_CONFIG_FILE": str(self.directory / "aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(self.directory / "aws-credentials")}

    def start(self, timeout: float = 30.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log = open(self.directory / self.LOG, "ab")  # noqa: SIM115 (kept open for the process)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited: {self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server was not ready in {timeout}s: {self.log_tail()}")

    def ready(self) -> bool:
        """True once the server answers HTTP (ListBuckets needs no signature on moto)."""
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def client(self):
        """A boto3 S3 client for this server, for setting up and inspecting what the code under test wrote."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under `prefix`, sorted."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

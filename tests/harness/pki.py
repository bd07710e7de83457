"""Certificates and keys for the local control plane, made with the openssl command line tool."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# ECDSA P-256: accepted by every component and far quicker to generate than RSA.
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_DAYS = "3650"


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the 'openssl' command is needed to make the test cluster's certificates")
    subprocess.run([openssl, *args], check=True, capture_output=True)


@dataclass(frozen=True)
class Pki:
    """Paths of every certificate and key the cluster uses."""

    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name

    @property
    def ca_cert(self) -> Path:
        return self.path("ca.crt")

    @property
    def ca_key(self) -> Path:
        return self.path("ca.key")

    @property
    def service_account_key(self) -> Path:
        return self.path("sa.key")

    @property
    def service_account_pub(self) -> Path:
        return self.path("sa.pub")

    def cert(self, name: str) -> tuple[Path, Path]:
        return self.path(f"{name}.crt"), self.path(f"{name}.key")


def create(directory: Path, *, service_ip: str) -> Pki:
    """Make a CA, the API server's serving cert, client certs per identity, and the SA signing key."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)
    _openssl(
        "req", "-x509", *_KEY, "-keyout", str(pki.ca_key), "-out", str(pki.ca_cert), "-days", _DAYS,
        "-subj", "/CN=mlcycle-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )
    sans = ",".join([
        "IP:127.0.0.1", f"IP:{service_ip}", "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local",
    ])
    _issue(pki, "apiserver", "/CN=kube-apiserver", usage="serverAuth", sans=sans)
    # Client identities: the bootstrap RBAC policy already binds these user and group names.
    _issue(pki, "admin", "/O=system:masters/CN=mlcycle-admin", usage="clientAuth")
    _issue(pki, "controller-manager", "/CN=system:kube-controller-manager", usage="clientAuth")
    _issue(pki, "scheduler", "/CN=system:kube-scheduler", usage="clientAuth")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(pki.service_account_key))
    _openssl("ec", "-in", str(pki.service_account_key), "-pubout", "-out", str(pki.service_account_pub))
    return pki


def _issue(pki: Pki, name: str, subject: str, *, usage: str, sans: str | None = None) -> None:
    cert, key = pki.cert(name)
    args = [
        "req", "-x509", *_KEY, "-keyout", str(key), "-out", str(cert), "-days", _DAYS, "-subj", subject,
        "-CA", str(pki.ca_cert), "-CAkey", str(pki.ca_key),
        "-addext", "basicConstraints=critical,CA:FALSE",
        "-addext", "keyUsage=critical,digitalSignature,keyEncipherment",
        "-addext", f"extendedKeyUsage={usage}",
    ]
    if sans:
        args += ["-addext", f"subjectAltName={sans}"]
    _openssl(*args)

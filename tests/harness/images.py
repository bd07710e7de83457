"""Container images for the cluster tier, built here: no registry is reachable, so nothing is pulled.

The bases come from Debian's packages (``debootstrap`` into a directory, ``docker import``); the project's two
images are built from ``operator/Dockerfile`` and ``runtime/Dockerfile`` as users build them, with build
arguments that point at those bases instead of ``python:3.11-slim`` and the uv image. Each base is tagged by a
digest of what made it, so a second run finds it and builds nothing; the project images rely on Docker's own
layer cache, which makes an unchanged rebuild take seconds.

The host reaches PyPI through a TLS-inspecting egress proxy whose CA is in the host's bundle. The build
stages get that bundle (``*-build`` bases); the final stages are ``FROM`` the plain bases, so no shipped image
carries it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .binaries import BuildError, cache_root

REPO = Path(__file__).resolve().parents[2]
REGISTRY = "mlcycle.local"  # never resolvable: a tag under it can only ever be an image built here
DEBIAN_SUITE = "bookworm"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PUBLIC_REPOSITORY = "ghcr.io/mlcycle"  # charts/mlcycle's image.repository and runtimeImage.repository
UV_VERSION = "0.13.9"  # the Makefile's UV_VERSION: the uv image is made of the venv's uv binary

PYTHON_DOCKERFILE = """\
FROM {debian}
# What python:3.11-slim gives an application: CPython 3.11 (bookworm's), CA certificates, /etc/services, tzdata.
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      python3 python-is-python3 ca-certificates netbase tzdata \\
 && rm -rf /var/lib/apt/lists/*
"""

BUILD_DOCKERFILE = """\
FROM {python}
# Build stages only: pip for the operator's build, and the host's CA bundle so that pip and uv reach PyPI
# through this machine's egress proxy. Never a base of a final stage.
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-pip \\
 && rm -rf /var/lib/apt/lists/*
COPY host-ca-bundle.crt /etc/ssl/host-ca-bundle.crt
ENV SSL_CERT_FILE=/etc/ssl/host-ca-bundle.crt \\
    PIP_CERT=/etc/ssl/host-ca-bundle.crt \\
    REQUESTS_CA_BUNDLE=/etc/ssl/host-ca-bundle.crt \\
    UV_NATIVE_TLS=1
"""

UV_DOCKERFILE = """\
FROM scratch
COPY uv /uv
"""


def docker_available() -> str | None:
    """None when a Docker daemon answers; otherwise why not, in words."""
    if shutil.which("docker") is None:
        return "no 'docker' on PATH (make system-deps installs Debian's docker.io)"
    proc = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"the Docker daemon does not answer: {proc.stderr.strip() or proc.stdout.strip()}"
    return None


def docker(*args: str, input: bytes | None = None, check: bool = True, env: dict | None = None,
           stdin=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], input=input, capture_output=True, env=env, stdin=stdin)
    if check and proc.returncode != 0:
        raise BuildError(f"docker {' '.join(args[:3])} … failed ({proc.returncode}):\n"
                         f"{proc.stdout.decode(errors='replace')[-3000:]}{proc.stderr.decode(errors='replace')[-3000:]}")
    return proc


def image_id(tag: str) -> str | None:
    proc = docker("image", "inspect", "--format", "{{.Id}}", tag, check=False)
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def build(tag: str, context: Path, dockerfile: str | Path, build_args: dict[str, str] | None = None,
          log=print) -> str:
    """`docker build` with the classic builder (BuildKit would fetch its Dockerfile frontend from a registry)."""
    args = ["build", "--pull=false", "-t", tag]
    for key, value in (build_args or {}).items():
        args += ["--build-arg", f"{key}={value}"]
    started = time.monotonic()
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    if isinstance(dockerfile, Path):
        docker(*args, "-f", str(dockerfile), str(context), env=env)
    else:
        docker(*args, "-f", "-", str(context), input=dockerfile.encode(), env=env)
    log(f"[images] built {tag} in {time.monotonic() - started:.0f}s")
    return tag


def _apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources), so containers use it too."""
    for path in [*sorted(Path("/etc/apt/sources.list.d").glob("*.sources")), Path("/etc/apt/sources.list")]:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] == ["URIs:"] and "security" not in words[1]:
                return words[1]
            if words[:1] == ["deb"] and "security" not in line:
                return next(w for w in words[1:] if "://" in w)
    return "http://deb.debian.org/debian"


def debian_base(log=print) -> str:
    """A minimal Debian image made here by debootstrap (what debian:bookworm-slim would be)."""
    mirror = _apt_mirror()
    tag = f"{REGISTRY}/debian:{DEBIAN_SUITE}-{_digest('minbase', DEBIAN_SUITE, mirror)}"
    if image_id(tag):
        return tag
    if shutil.which("debootstrap") is None:
        raise BuildError("debootstrap is not installed (make system-deps installs it)")
    log(f"[images] debootstrap {DEBIAN_SUITE} from {mirror} -> {tag}")
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=cache_root()))
    try:
        proc = subprocess.run(["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(root), mirror],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"debootstrap failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        # Trim what a container never uses, as the slim images do.
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(root / sub, ignore_errors=True)
            (root / sub).mkdir(parents=True, exist_ok=True)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        try:
            docker("import", "--change", 'CMD ["bash"]', "-", tag, stdin=tar.stdout)
        finally:
            tar.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    log(f"[images] {tag} in {time.monotonic() - started:.0f}s")
    return tag


@dataclass(frozen=True)
class Bases:
    debian: str
    python: str  # the final stages' base: what python:3.11-slim is to users
    python_build: str  # the build stages' base: the above, pip, the host's CA bundle
    uv: str


def bases(log=print) -> Bases:
    debian = debian_base(log)
    python = f"{REGISTRY}/python:3.11-{DEBIAN_SUITE}-{_digest(debian, PYTHON_DOCKERFILE)}"
    if not image_id(python):
        with tempfile.TemporaryDirectory() as ctx:
            build(python, Path(ctx), PYTHON_DOCKERFILE.format(debian=debian), log=log)
    bundle = HOST_CA_BUNDLE.read_bytes() if HOST_CA_BUNDLE.exists() else b""
    python_build = f"{REGISTRY}/python-build:3.11-{DEBIAN_SUITE}-{_digest(python, BUILD_DOCKERFILE, bundle)}"
    if not image_id(python_build):
        with tempfile.TemporaryDirectory() as ctx:
            (Path(ctx) / "host-ca-bundle.crt").write_bytes(bundle)
            build(python_build, Path(ctx), BUILD_DOCKERFILE.format(python=python), log=log)
    uv_binary = shutil.which("uv", path=str(REPO / ".venv" / "bin")) or shutil.which("uv")
    if uv_binary is None:
        raise BuildError("no uv binary (make setup installs it into .venv)")
    version = subprocess.run([uv_binary, "--version"], capture_output=True, text=True).stdout.split()[1:2]
    if version != [UV_VERSION]:
        raise BuildError(f"{uv_binary} is uv {version}, the images pin {UV_VERSION}")
    uv = f"{REGISTRY}/uv:{UV_VERSION}"
    if not image_id(uv):
        with tempfile.TemporaryDirectory() as ctx:
            shutil.copy2(uv_binary, Path(ctx) / "uv")
            build(uv, Path(ctx), UV_DOCKERFILE, log=log)
    return Bases(debian=debian, python=python, python_build=python_build, uv=uv)


@dataclass(frozen=True)
class ProjectImages:
    operator: str
    runtime: str


def app_version() -> str:
    import yaml

    return str(yaml.safe_load((REPO / "charts" / "mlcycle" / "Chart.yaml").read_text())["appVersion"])


def project_images(log=print) -> ProjectImages:
    """The operator and runtime images from their Dockerfiles, under the names the chart and the example use
    (``ghcr.io/mlcycle/<name>:<appVersion>``, as a user who builds them tags them), so both run unchanged."""
    b = bases(log)
    built = {}
    for name, args in {
        "operator": {"PYTHON_IMAGE": b.python, "BUILD_IMAGE": b.python_build},
        "runtime": {"BASE_IMAGE": b.python, "BUILD_BASE_IMAGE": b.python_build, "UV_IMAGE": b.uv},
    }.items():
        tag = f"{PUBLIC_REPOSITORY}/{name}:{app_version()}"
        build(tag, REPO, REPO / name / "Dockerfile", args, log=log)
        built[name] = tag
    return ProjectImages(**built)


def public_project_images(log=print) -> ProjectImages:
    """The two images from their Dockerfiles with their public defaults (python:3.11-slim, the uv image, pulled
    as Docker pulls them): what a user whose machine reaches the registries builds. Not run on this project's
    machines, which reach none."""
    built = {name: build(f"{PUBLIC_REPOSITORY}/{name}:{app_version()}", REPO, REPO / name / "Dockerfile", log=log)
             for name in ("operator", "runtime")}
    return ProjectImages(**built)


def size_mb(tag: str) -> float:
    out = docker("image", "inspect", "--format", "{{json .Size}}", tag).stdout
    return json.loads(out) / 1e6

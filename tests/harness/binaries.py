"""Build the control-plane binaries from their pinned Go modules, once, into a cache outside the repo.

Each component is a consumer module under ``tests/harness/go/<name>/`` whose go.mod and go.sum pin
every dependency. A build lands in ``$MLCYCLE_CACHE/bin/<name>-<version>-<digest>/`` (default cache
``~/.cache/mlcycle``); the digest covers go.mod, go.sum, the Go toolchain and the link flags, so a
version bump rebuilds and anything else reuses what is there.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

GO_DIR = Path(__file__).resolve().parent / "go"

KUBERNETES_VERSION = "v1.37.2"
ETCD_VERSION = "v3.7.3"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.22.0"
KUBERAY_VERSION = "v1.5.0"


def _version_ldflags(packages: list[str], version: str) -> list[str]:
    major, minor = version.lstrip("v").split(".")[:2]
    flags = []
    for pkg in packages:
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return flags


@dataclass(frozen=True)
class Component:
    """One consumer module and the commands built from it."""

    name: str
    version: str
    commands: dict[str, str]  # binary name -> Go package path
    ldflags: list[str] = field(default_factory=list)
    # Files copied out of a dependency's module directory next to the binaries (module, relative paths).
    module_files: tuple[str, tuple[str, ...]] | None = None
    # The consumer module under go/, when several components build from one (default: the name).
    module: str = ""
    tags: tuple[str, ...] = ()
    # Static binaries for images with no C library of their own (FROM scratch) or an older one.
    static: bool = False

    @property
    def module_dir(self) -> Path:
        return GO_DIR / (self.module or self.name)


COMPONENTS: dict[str, Component] = {
    "kubernetes": Component(
        name="kubernetes",
        version=KUBERNETES_VERSION,
        commands={
            "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
            "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
            "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
            "kubectl": "k8s.io/kubernetes/cmd/kubectl",
        },
        # Without these the servers report v0.0.0 and clients' version skew checks misfire.
        ldflags=_version_ldflags(
            ["k8s.io/component-base/version", "k8s.io/client-go/pkg/version"], KUBERNETES_VERSION
        ),
    ),
    "etcd": Component(
        name="etcd",
        version=ETCD_VERSION,
        commands={"etcd": "."},
    ),
    "kwok": Component(
        name="kwok",
        version=KWOK_VERSION,
        commands={"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
        # The kwok binary has no built-in lifecycle: it needs Stage objects. These are the "fast"
        # stages that kwokctl itself uses, taken from the pinned module rather than copied here.
        module_files=(
            "sigs.k8s.io/kwok",
            (
                "kustomize/stage/node/fast/node-initialize.yaml",
                "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
                "kustomize/stage/pod/fast/pod-ready.yaml",
                "kustomize/stage/pod/fast/pod-complete.yaml",
                "kustomize/stage/pod/fast/pod-delete.yaml",
            ),
        ),
    ),
    "helm": Component(
        name="helm",
        version=HELM_VERSION,
        commands={"helm": "helm.sh/helm/v3/cmd/helm"},
        ldflags=[f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"],
    ),
}

# What the cluster tier's images are made of (tests/harness/kind.py): kind's node image, the images it preloads,
# and the in-chart Prometheus. Built only for that tier: the control plane above is all the integration tier needs.
CLUSTER_COMPONENTS: dict[str, Component] = {
    "kind": Component(name="kind", version="v0.33.0", commands={"kind": "sigs.k8s.io/kind"}),
    "containerd": Component(
        name="containerd",
        version="v2.4.2",
        commands={
            "containerd": "github.com/containerd/containerd/v2/cmd/containerd",
            "ctr": "github.com/containerd/containerd/v2/cmd/ctr",
            "containerd-shim-runc-v2": "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
        },
        ldflags=["-X github.com/containerd/containerd/v2/version.Version=v2.4.2"],
        # As kind's base image builds it: no snapshotter kind never selects (btrfs would need its C headers).
        tags=("no_aufs", "no_zfs", "no_btrfs", "no_devmapper"),
    ),
    "crictl": Component(
        name="crictl",
        version="v1.37.0",
        commands={"crictl": "sigs.k8s.io/cri-tools/cmd/crictl"},
        ldflags=["-X sigs.k8s.io/cri-tools/pkg/version.Version=v1.37.0"],
        static=True,
    ),
    "cni-plugins": Component(
        name="cni-plugins",
        version="v1.10.0",
        commands={
            name: f"github.com/containernetworking/plugins/plugins/{kind}/{name}"
            for kind, name in (("main", "bridge"), ("main", "loopback"), ("main", "ptp"),
                               ("ipam", "host-local"), ("meta", "portmap"))
        },
        static=True,
    ),
    "coredns": Component(
        name="coredns", version="v1.15.0", commands={"coredns": "github.com/coredns/coredns"}, static=True
    ),
    "local-path-provisioner": Component(
        name="local-path-provisioner",
        version="v0.0.30",
        commands={"local-path-provisioner": "github.com/rancher/local-path-provisioner"},
        static=True,
    ),
    # The chart's Prometheus (prom/prometheus:v3.5.0): Debian's build has no Kubernetes service discovery, and
    # Prometheus' module has replace directives that `go install` refuses, hence a consumer module.
    "prometheus": Component(
        name="prometheus",
        version="v3.5.0",
        commands={"prometheus": "github.com/prometheus/prometheus/cmd/prometheus"},
        ldflags=["-X github.com/prometheus/common/version.Version=3.5.0",
                 "-X github.com/prometheus/common/version.Branch=mlcycle-harness"],
        static=True,
    ),
    # The resource metrics API behind the serving HPAs (kind has none of its own).
    "metrics-server": Component(
        name="metrics-server",
        version="v0.8.0",
        commands={"metrics-server": "sigs.k8s.io/metrics-server/cmd/metrics-server"},
        ldflags=["-X sigs.k8s.io/metrics-server/pkg/version.gitVersion=v0.8.0"],
        static=True,
    ),
    # KubeRay's operator (quay.io/kuberay/operator:v1.5.0): the RayJob controller behind distributed TrainingJobs.
    # Its CRDs and RBAC come from the same module (tests/harness/kuberay.py).
    "kuberay": Component(
        name="kuberay",
        version=KUBERAY_VERSION,
        commands={"ray-operator": "github.com/ray-project/kuberay/ray-operator"},
        static=True,
    ),
    # Last: it reuses most of the control plane's Go build cache.
    "kubernetes-node": Component(
        name="kubernetes-node",
        module="kubernetes",
        version=KUBERNETES_VERSION,
        commands={
            "kubelet": "k8s.io/kubernetes/cmd/kubelet",
            "kubeadm": "k8s.io/kubernetes/cmd/kubeadm",
            "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
        },
        ldflags=_version_ldflags(
            ["k8s.io/component-base/version", "k8s.io/client-go/pkg/version"], KUBERNETES_VERSION
        ),
    ),
}

KWOK_STAGES_FILE = "kwok-stages.yaml"


def cache_root() -> Path:
    return Path(os.environ.get("MLCYCLE_CACHE", Path.home() / ".cache" / "mlcycle"))


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise BuildError("the Go toolchain ('go') is not on PATH; it is needed to build the control plane")
    return go


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # go.sum pins every hash; the checksum database is not reachable from every machine we run on.
    env.setdefault("GOSUMDB", "off")
    env["GOFLAGS"] = "-mod=readonly -buildvcs=false"
    return env


def _go_version() -> str:
    return subprocess.run([_go(), "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout.strip()


class BuildError(RuntimeError):
    """A control-plane binary could not be built."""


def install_dir(component: Component) -> Path:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((component.module_dir / name).read_bytes())
    digest.update(_go_version().encode())
    digest.update(" ".join(component.ldflags).encode())
    digest.update(f"{component.tags} static={component.static}".encode())
    return cache_root() / "bin" / f"{component.name}-{component.version}-{digest.hexdigest()[:10]}"


def _is_built(target: Path, component: Component) -> bool:
    return (target / ".complete").exists() and all((target / cmd).exists() for cmd in component.commands)


def ensure(component: Component, log=print) -> Path:
    """Return the directory holding the component's binaries, building them first if needed."""
    target = install_dir(component)
    if _is_built(target, component):
        return target
    log(f"[harness] building {component.name} {component.version} ({', '.join(component.commands)}) -> {target}")
    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{component.name}-", dir=target.parent))
    try:
        env = _go_env()
        if component.static:
            env["CGO_ENABLED"] = "0"
        ldflags = " ".join(["-s", "-w", *component.ldflags])
        cmd = [_go(), "build", "-trimpath", f"-ldflags={ldflags}"]
        if component.tags:
            cmd.append(f"-tags={','.join(component.tags)}")
        cmd += ["-o", f"{staging}/"]
        packages = list(component.commands.values())
        if packages == ["."]:
            cmd[-1] = str(staging / next(iter(component.commands)))
        proc = subprocess.run([*cmd, *packages], cwd=component.module_dir, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"go build of {component.name} failed:\n{proc.stdout}{proc.stderr}")
        if component.module_files:
            module, files = component.module_files
            mod_dir = subprocess.run(
                [_go(), "list", "-m", "-f", "{{.Dir}}", module],
                cwd=component.module_dir, env=env, capture_output=True, text=True, check=True,
            ).stdout.strip()
            docs = [Path(mod_dir, f).read_text().strip() for f in files]
            (staging / KWOK_STAGES_FILE).write_text("\n---\n".join(docs) + "\n")
        (staging / ".complete").write_text(f"{component.version}\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log(f"[harness] built {component.name} in {time.monotonic() - started:.0f}s")
    return target


def ensure_all(log=print, components: dict[str, Component] = COMPONENTS) -> dict[str, Path]:
    """Build (or find in the cache) every component; return binary name -> path."""
    paths: dict[str, Path] = {}
    for component in components.values():
        directory = ensure(component, log=log)
        for cmd in component.commands:
            paths[cmd] = directory / cmd
        if component.module_files:
            paths[KWOK_STAGES_FILE] = directory / KWOK_STAGES_FILE
    return paths


def main() -> int:
    started = time.monotonic()
    try:
        paths = ensure_all()
    except BuildError as err:
        print(f"[harness] {err}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"  {name:24} {path}")
    print(f"[harness] control-plane binaries ready in {time.monotonic() - started:.1f}s")
    return 0

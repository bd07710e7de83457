"""A kind cluster made entirely of images built here: the cluster tier's real containers.

kind itself comes from its Go module; so do containerd, crictl, the CNI plugins, CoreDNS, the local-path
provisioner and the Kubernetes node binaries (``binaries.CLUSTER_COMPONENTS``). ``node_image`` assembles kind's
node image from kind's own base files (read from the pinned module, not copied into this repository), those
binaries, bookworm's packages, and every image kubeadm and kind start, preloaded into the node's containerd
as kind's own ``build node-image`` does; nothing is pulled at cluster creation or after.

``KindCluster.create`` runs ``kind create cluster --config kind-config.yaml`` with the user's file as it is;
what only this machine needs is added by the harness, never written into that file:

- the node image (a user's kind pulls ``kindest/node``);
- the Kubernetes images' names (etcd and CoreDNS as built here, through kubeadm's image fields);
- ``failCgroupV1: false`` where the host has cgroup v1 (the kubelet refuses v1 from 1.35 unless told);
- no default CNI (kindnetd is not published as a Go module here): the bridge plugin with a route per node
  to every other node's pod range, the same network kindnetd sets up;
- where root lacks CAP_SYS_RESOURCE (this VM), ``docker run --privileged`` fails, so kind runs with a
  ``docker`` in front of the real one that grants every capability but that one; containerd in the nodes
  is then told not to lower ``oom_score_adj``, which needs it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import binaries, images
from .binaries import KUBERNETES_VERSION, BuildError, cache_root

REPO = images.REPO
KIND_CONFIG = REPO / "kind-config.yaml"
KIND_MODULE = "sigs.k8s.io/kind"
LOCAL_PATH_MODULE = "github.com/rancher/local-path-provisioner"
PAUSE_VERSION = "3.10.2"  # build/pause/Makefile's TAG in k8s.io/kubernetes v1.37.2
CAP_SYS_RESOURCE = 24
# What the node image is made of (its digest covers exactly these builds and the control plane's).
NODE_IMAGE_COMPONENTS = ("kubernetes-node", "kind", "containerd", "crictl", "cni-plugins", "coredns",
                         "local-path-provisioner")
KIND_LABEL = "io.x-k8s.kind.cluster"

NODE_DOCKERFILE = """\
FROM {debian} AS build
# kind's base image, on bookworm: its package list (images/base/Dockerfile), its files (images/base/files from
# the kind module), and binaries built here from their Go modules in place of kind's release downloads.
COPY files/ /
RUN chmod -R u+w,go-w /etc /kind /usr/local/bin && chmod 0755 /kind /kind/bin /kind/bin/* /usr/local/bin/* \\
 && apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      systemd conntrack iptables nftables iproute2 ethtool util-linux mount kmod libseccomp2 pigz \\
      e2fsprogs bash ca-certificates curl jq procps runc \\
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/log/* /usr/share/doc/* /usr/share/man/* \\
 && find /lib/systemd/system/sysinit.target.wants/ -name "systemd-tmpfiles-setup.service" -delete \\
 && rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \\
      /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \\
      /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/* \\
 && echo "ReadKMsg=no" >> /etc/systemd/journald.conf \\
 && ln -sf /usr/lib/systemd/systemd /sbin/init \\
 && systemctl enable kubelet.service containerd.service undo-mount-hacks.service \\
 && systemctl mask systemd-binfmt.service \\
 && rm /etc/systemd/system/containerd-fuse-overlayfs.service \\
 && mkdir -p /etc/kubernetes/manifests /opt/cni/bin /kind/manifests
COPY bin/containerd bin/ctr bin/containerd-shim-runc-v2 bin/crictl /usr/local/bin/
COPY bin/kubelet bin/kubeadm bin/kubectl /usr/bin/
COPY cni/ /opt/cni/bin/
COPY node-entrypoint /usr/local/bin/mlcycle-node-entrypoint
COPY default-storage.yaml /kind/manifests/default-storage.yaml
# No fuse-overlayfs snapshotter here (rootless only); the pause image is the one built from this release.
RUN sed -i -e '/\\[proxy_plugins/,/^$/d' -e 's#registry.k8s.io/pause:[0-9.]*#registry.k8s.io/pause:{pause}#' \\
      /etc/containerd/config.toml \\
 && ctr oci spec | jq '.hooks.createContainer += [{{"path": "/kind/bin/mount-product-files.sh"}}]' \\
      | jq 'del(.process.rlimits)' > /etc/containerd/cri-base.json \\
 && echo "{kubernetes}" > /kind/version
COPY images/ /kind/images/
# Preload every image the cluster starts, as kind's build does: into containerd's k8s.io namespace, pinned,
# not unpacked (the CRI unpacks on first use).
RUN (containerd > /tmp/containerd.log 2>&1 &) \\
 && for i in $(seq 50); do ctr version >/dev/null 2>&1 && break; sleep 0.2; done \\
 && for tar in /kind/images/*.tar; do \\
      ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned --all-platforms \\
          --no-unpack --digests "$tar" || {{ cat /tmp/containerd.log; exit 1; }}; \\
    done \\
 && ctr --namespace=k8s.io images ls -q > /kind/images.txt \\
 && pkill containerd; while pgrep -x containerd >/dev/null; do sleep 0.2; done \\
 && rm -rf /kind/images /tmp/* /var/lib/containerd/tmpmounts
FROM scratch
COPY --from=build / /
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/mlcycle-node-entrypoint", "/usr/local/bin/entrypoint", "/sbin/init"]
"""

# Runs before kind's entrypoint. A node started without --privileged (see docker_shim) gets its cgroup
# hierarchies read-only; kind's entrypoint must write them. With --privileged there is nothing to do.
NODE_ENTRYPOINT = """\
#!/bin/bash
set -euo pipefail
while read -r _ _ _ _ mountpoint options _; do
  case "$mountpoint" in
    /sys/fs/cgroup|/sys/fs/cgroup/*)
      case ",$options," in *,ro,*) mount -o remount,bind,rw "$mountpoint" ;; esac ;;
  esac
done < <(grep ' /sys/fs/cgroup' /proc/self/mountinfo)
exec "$@"
"""

COMPONENT_DOCKERFILE = """\
FROM {base}
{setup}COPY {binary} {path}
ENTRYPOINT ["{path}"]
"""

# `docker` for kind where --privileged cannot work: every capability but CAP_SYS_RESOURCE, all devices, no
# seccomp/AppArmor confinement and unmasked /proc and /sys paths — what --privileged grants, less that one.
DOCKER_SHIM = """\
#!/bin/bash
args=()
for arg in "$@"; do
  if [ "$arg" = "--privileged" ]; then
    case "$1" in
      run|create)
        # /dev/kmsg: the kubelet reads OOM kills there (--privileged would bring every host device).
        args+=(--cap-add=ALL --cap-drop=SYS_RESOURCE --device-cgroup-rule='a *:* rwm' --device=/dev/kmsg
               --security-opt=seccomp=unconfined --security-opt=apparmor=unconfined
               --security-opt=systempaths=unconfined) ;;
    esac  # docker exec: the container's own capabilities
  else
    args+=("$arg")
  fi
done
exec {docker} "${{args[@]}}"
"""


def _module_dir(component: str, module: str) -> Path:
    """Where Go keeps `module` as `component`'s consumer module pins it (downloaded by its build)."""
    c = binaries.CLUSTER_COMPONENTS[component]
    proc = subprocess.run(["go", "list", "-m", "-f", "{{.Dir}}", module], cwd=c.module_dir,
                          env=binaries._go_env(), capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise BuildError(f"go list -m {module} failed: {proc.stderr.strip()}")
    return Path(proc.stdout.strip())


def _pause_binary(work: Path) -> Path:
    source = _module_dir("kubernetes-node", "k8s.io/kubernetes") / "build" / "pause" / "linux" / "pause.c"
    out = work / "pause"
    proc = subprocess.run(["gcc", "-Os", "-Wall", "-Werror", "-static", f"-DVERSION=v{PAUSE_VERSION}-mlcycle",
                           "-o", str(out), str(source)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"building pause from {source} failed: {proc.stderr}")
    return out


@dataclass(frozen=True)
class ComponentImage:
    tag: str
    binary: Path
    path: str  # where the binary lives in the image
    base: str = ""  # default: the Debian base
    setup: str = ""  # Dockerfile lines before the binary


def component_images(bins: dict[str, Path], debian: str, work: Path) -> list[ComponentImage]:
    """Every image kubeadm and kind start, named as they are referred to."""
    k8s = "registry.k8s.io"
    return [
        *(ComponentImage(f"{k8s}/{name}:{KUBERNETES_VERSION}", bins[name], f"/usr/local/bin/{name}")
          for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")),
        # kube-proxy runs in nftables mode (see cluster_config): nft is all it needs besides itself.
        ComponentImage(f"{k8s}/kube-proxy:{KUBERNETES_VERSION}", bins["kube-proxy"], "/usr/local/bin/kube-proxy",
                       setup="RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
                             "--no-install-recommends nftables conntrack && rm -rf /var/lib/apt/lists/*\n"),
        ComponentImage(f"{k8s}/pause:{PAUSE_VERSION}", _pause_binary(work), "/pause", base="scratch"),
        ComponentImage(f"{images.REGISTRY}/etcd:{binaries.ETCD_VERSION}", bins["etcd"], "/usr/local/bin/etcd"),
        ComponentImage(f"{images.REGISTRY}/coredns:{binaries.CLUSTER_COMPONENTS['coredns'].version}",
                       bins["coredns"], "/coredns"),
        ComponentImage(f"{images.REGISTRY}/local-path-provisioner:"
                       f"{binaries.CLUSTER_COMPONENTS['local-path-provisioner'].version}",
                       bins["local-path-provisioner"], "/usr/local/bin/local-path-provisioner"),
    ]


PROMETHEUS_DOCKERFILE = """\
FROM {debian}
COPY prometheus /bin/prometheus
RUN mkdir -p /etc/prometheus /prometheus && chown 65534:65534 /prometheus
# As prom/prometheus: nobody, the binary as entrypoint, the TSDB in /prometheus.
USER 65534:65534
WORKDIR /prometheus
ENTRYPOINT ["/bin/prometheus"]
"""


METRICS_SERVER_DOCKERFILE = """\
FROM {debian}
COPY metrics-server /metrics-server
USER 65534:65534
ENTRYPOINT ["/metrics-server"]
"""


def _image_of(component_name: str, tag: str, dockerfile: str, log=print) -> str:
    """An image of one binary built here, under `tag`, rebuilt when the binary or the Dockerfile change."""
    component = binaries.CLUSTER_COMPONENTS[component_name]
    [binary] = binaries.ensure_all(log=log, components={component_name: component}).values()
    debian = images.debian_base(log)
    digest = images._digest(debian, dockerfile, binary.parent.name)
    built = images.docker("image", "inspect", "--format", "{{index .Config.Labels \"mlcycle.digest\"}}", tag,
                          check=False).stdout.decode().strip()
    if built != digest:
        with tempfile.TemporaryDirectory() as ctx:
            shutil.copy2(binary, Path(ctx) / binary.name)
            text = dockerfile.format(debian=debian) + f'LABEL mlcycle.digest="{digest}"\n'
            images.build(tag, Path(ctx), text, log=log)
    return tag


def prometheus_image(log=print) -> str:
    """The chart's in-cluster Prometheus (values prometheus.image), built from its Go module under that name."""
    version = binaries.CLUSTER_COMPONENTS["prometheus"].version
    return _image_of("prometheus", f"prom/prometheus:{version}", PROMETHEUS_DOCKERFILE, log)


def public_metrics_server_image() -> str:
    """Where metrics-server's own manifests pull it from, for a machine that reaches registry.k8s.io."""
    return f"registry.k8s.io/metrics-server/metrics-server:{binaries.CLUSTER_COMPONENTS['metrics-server'].version}"


def metrics_server_image(log=print) -> str:
    version = binaries.CLUSTER_COMPONENTS["metrics-server"].version
    return _image_of("metrics-server", f"{images.REGISTRY}/metrics-server:{version}", METRICS_SERVER_DOCKERFILE, log)


def metrics_server_manifest(kubectl: Path, image: str) -> str:
    """metrics-server's own manifests (kustomize base in its module), with the image built here; kind's kubelets
    serve self-signed certificates, hence --kubelet-insecure-tls (what metrics-server's docs say for kind)."""
    base = _module_dir("metrics-server", "sigs.k8s.io/metrics-server") / "manifests" / "base"
    proc = subprocess.run([str(kubectl), "kustomize", str(base)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"kubectl kustomize {base}: {proc.stderr}")
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    for doc in docs:
        if doc["kind"] == "Deployment":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            container["image"] = image
            container["args"].append("--kubelet-insecure-tls")
    return yaml.safe_dump_all(docs, sort_keys=False)


def storage_manifest(provisioner: str, helper: str) -> str:
    """The local-path provisioner's own manifest, with the images built here, as kind's default StorageClass."""
    source = _module_dir("local-path-provisioner", LOCAL_PATH_MODULE) / "deploy" / "local-path-storage.yaml"
    docs = [d for d in yaml.safe_load_all(source.read_text()) if d]
    for doc in docs:
        if doc["kind"] == "Deployment":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            container["image"] = provisioner
        elif doc["kind"] == "StorageClass":
            # kind's name for it, and the default, so a claim without a class binds.
            doc["metadata"]["name"] = "standard"
            doc["metadata"].setdefault("annotations", {})["storageclass.kubernetes.io/is-default-class"] = "true"
        elif doc["kind"] == "ConfigMap":
            data = doc["data"]
            data["config.json"] = data["config.json"].replace("/opt/local-path-provisioner",
                                                              "/var/local-path-provisioner")
            data["helperPod.yaml"] = data["helperPod.yaml"].replace("image: busybox", f"image: {helper}")
    return yaml.safe_dump_all(docs, sort_keys=False)


def node_image(log=print) -> str:
    """kind's node image for Kubernetes `KUBERNETES_VERSION`, built here; its tag is a digest of its inputs."""
    node = {name: binaries.CLUSTER_COMPONENTS[name] for name in NODE_IMAGE_COMPONENTS}
    bins = {**binaries.ensure_all(log=log, components=node), **binaries.ensure_all(log=log)}
    debian = images.debian_base(log)
    kind_files = _module_dir("kind", KIND_MODULE) / "images" / "base" / "files"
    parts = [debian, NODE_DOCKERFILE, NODE_ENTRYPOINT, COMPONENT_DOCKERFILE, PAUSE_VERSION,
             *(str(p.parent.name) for p in bins.values())]
    tag = f"{images.REGISTRY}/kind-node:{KUBERNETES_VERSION}-{images._digest(*parts)}"
    if images.image_id(tag):
        return tag
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        ctx = Path(tmp)
        shutil.copytree(kind_files, ctx / "files")
        subprocess.run(["chmod", "-R", "u+w", str(ctx / "files")], check=True)
        (ctx / "bin").mkdir()
        for name in ("containerd", "ctr", "containerd-shim-runc-v2", "crictl", "kubelet", "kubeadm", "kubectl"):
            shutil.copy2(bins[name], ctx / "bin" / name)
        (ctx / "cni").mkdir()
        for name in binaries.CLUSTER_COMPONENTS["cni-plugins"].commands:
            shutil.copy2(bins[name], ctx / "cni" / name)
        (ctx / "node-entrypoint").write_text(NODE_ENTRYPOINT)
        (ctx / "node-entrypoint").chmod(0o755)
        comps = component_images(bins, debian, ctx)
        provisioner = next(c.tag for c in comps if "local-path" in c.tag)
        (ctx / "default-storage.yaml").write_text(storage_manifest(provisioner, debian))
        (ctx / "images").mkdir()
        for comp in comps:
            if not images.image_id(comp.tag):
                with tempfile.TemporaryDirectory() as cctx:
                    shutil.copy2(comp.binary, Path(cctx) / comp.binary.name)
                    images.build(comp.tag, Path(cctx), COMPONENT_DOCKERFILE.format(
                        base=comp.base or debian, setup=comp.setup, binary=comp.binary.name, path=comp.path),
                        log=log)
        # One archive per image; the helper pods of the local-path provisioner run the Debian base itself.
        for ref in [c.tag for c in comps] + [debian]:
            name = ref.replace("/", "_").replace(":", "_")
            with open(ctx / "images" / f"{name}.tar", "wb") as out:
                proc = subprocess.run(["docker", "save", ref], stdout=out, stderr=subprocess.PIPE)
            if proc.returncode != 0:
                raise BuildError(f"docker save {ref}: {proc.stderr.decode()}")
        images.build(tag, ctx, NODE_DOCKERFILE.format(debian=debian, pause=PAUSE_VERSION,
                                                      kubernetes=KUBERNETES_VERSION), log=log)
    log(f"[kind] node image {tag} in {time.monotonic() - started:.0f}s")
    return tag


def lacks_sys_resource() -> bool:
    """True where root cannot grant CAP_SYS_RESOURCE (so `docker run --privileged` fails)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return not (int(line.split()[1], 16) >> CAP_SYS_RESOURCE) & 1
    return False


def cgroup_v1() -> bool:
    return not Path("/sys/fs/cgroup/cgroup.controllers").exists()


def docker_shim(directory: Path) -> Path | None:
    """A directory to put first on kind's PATH where --privileged cannot work here; None elsewhere."""
    if not lacks_sys_resource():
        return None
    real = shutil.which("docker")
    if real is None:
        raise BuildError("no 'docker' on PATH")
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "docker"
    shim.write_text(DOCKER_SHIM.format(docker=real))
    shim.chmod(0o755)
    return directory


def cluster_config(user_config: Path = KIND_CONFIG, name: str | None = None) -> dict:
    """The user's kind config, plus what this machine needs (see the module docstring)."""
    config = yaml.safe_load(user_config.read_text())
    if name:
        config["name"] = name
    networking = config.setdefault("networking", {})
    networking["disableDefaultCNI"] = True
    networking["kubeProxyMode"] = "nftables"
    patches = list(config.get("kubeadmConfigPatches") or [])
    patches.append(yaml.safe_dump({
        "kind": "ClusterConfiguration",
        "etcd": {"local": {"imageRepository": images.REGISTRY, "imageTag": binaries.ETCD_VERSION}},
        "dns": {"imageRepository": images.REGISTRY,
                "imageTag": binaries.CLUSTER_COMPONENTS["coredns"].version},
    }))
    if cgroup_v1():
        patches.append(yaml.safe_dump({"kind": "KubeletConfiguration", "failCgroupV1": False}))
    config["kubeadmConfigPatches"] = patches
    if lacks_sys_resource():
        containerd = list(config.get("containerdConfigPatches") or [])
        containerd.append('[plugins."io.containerd.grpc.v1.cri"]\n  restrict_oom_score_adj = true\n')
        config["containerdConfigPatches"] = containerd
    return config


CNI_CONFLIST = {
    "cniVersion": "1.0.0",
    "name": "mlcycle",
    "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "SUBNET"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}


@dataclass
class KindCluster:
    """One kind cluster: created from kind-config.yaml with the node image built here, deleted by name."""

    name: str
    directory: Path
    kind: Path = field(default=None)  # type: ignore[assignment]
    kubectl: Path = field(default=None)  # type: ignore[assignment]
    helm: Path = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        bins = {**binaries.ensure_all(components={"kind": binaries.CLUSTER_COMPONENTS["kind"]}),
                **binaries.ensure_all()}
        self.kind = self.kind or bins["kind"]
        self.kubectl = self.kubectl or bins["kubectl"]
        self.helm = self.helm or bins["helm"]

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        shim = docker_shim(self.directory / "docker-shim")
        if shim is not None:
            env["PATH"] = f"{shim}:{env['PATH']}"
        return env

    def run_kind(self, *args: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(self.kind), *args], env=self._env(), capture_output=True, input=input)
        if check and proc.returncode != 0:
            raise BuildError(f"kind {' '.join(args[:3])} failed:\n{proc.stdout.decode()[-3000:]}"
                             f"{proc.stderr.decode()[-3000:]}")
        return proc

    def kubectl_run(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(self.kubectl), *args], env=self._env(), capture_output=True, text=True,
                              input=input)
        if check and proc.returncode != 0:
            raise BuildError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def exists(self) -> bool:
        out = self.run_kind("get", "clusters", check=False).stdout.decode().split()
        return self.name in out

    def nodes(self) -> list[str]:
        return self.run_kind("get", "nodes", "--name", self.name).stdout.decode().split()

    def create(self, log=print, user_config: Path = KIND_CONFIG, public: bool = False) -> None:
        """`public`: kind-config.yaml as it is, with kind's own node image and CNI (pulled as kind pulls them),
        what a user with a registry gets; otherwise the node image built here and what this machine needs."""
        if public:
            log(f"[kind] creating cluster {self.name} from {user_config.name} (kind's own node image)")
            started = time.monotonic()
            self.run_kind("create", "cluster", "--name", self.name, "--config", str(user_config),
                          "--kubeconfig", str(self.kubeconfig))
            self.kubectl_run("wait", "--for=condition=Ready", "node", "--all", "--timeout=300s")
            log(f"[kind] cluster {self.name} ready in {time.monotonic() - started:.0f}s")
            return
        image = node_image(log)
        config = self.directory / "kind-config.yaml"
        config.write_text(yaml.safe_dump(cluster_config(user_config, self.name), sort_keys=False))
        log(f"[kind] creating cluster {self.name} from {user_config.name} (node image {image})")
        started = time.monotonic()
        self.run_kind("create", "cluster", "--name", self.name, "--config", str(config), "--image", image,
                      "--kubeconfig", str(self.kubeconfig), "--retain")
        self.setup_network()
        self.kubectl_run("wait", "--for=condition=Ready", "node", "--all", "--timeout=180s")
        self.kubectl_run("rollout", "status", "-n", "kube-system", "deployment/coredns", "--timeout=180s")
        log(f"[kind] cluster {self.name} ready in {time.monotonic() - started:.0f}s")

    def setup_network(self) -> None:
        """Pod networking in place of kindnetd: a bridge per node on its pod range, routes to the others'."""
        nodes = json.loads(self.kubectl_run("get", "nodes", "-o", "json").stdout)["items"]
        info = []
        for node in nodes:
            address = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
            info.append((node["metadata"]["name"], address, node["spec"]["podCIDR"]))
        for name, _, cidr in info:
            conflist = json.dumps(CNI_CONFLIST).replace("SUBNET", str(ipaddress.ip_network(cidr)))
            script = [f"cat > /etc/cni/net.d/10-mlcycle.conflist <<'EOF'\n{conflist}\nEOF"]
            script += [f"ip route replace {other_cidr} via {other_ip}"
                       for other, other_ip, other_cidr in info if other != name]
            proc = subprocess.run(["docker", "exec", "-i", name, "bash", "-euc", "\n".join(script)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise BuildError(f"network setup on {name} failed: {proc.stderr}")

    def install_metrics_server(self, image: str) -> None:
        """The resource metrics API (HPAs on CPU), from metrics-server's manifests; waits until it is served."""
        self.kubectl_run("apply", "-f", "-", input=metrics_server_manifest(self.kubectl, image))
        self.kubectl_run("rollout", "status", "-n", "kube-system", "deployment/metrics-server", "--timeout=180s")
        self.kubectl_run("wait", "--for=condition=Available", "apiservice/v1beta1.metrics.k8s.io",
                         "--timeout=120s")

    def install_kuberay(self, image: str, log=print) -> None:
        """KubeRay's operator and CRDs (tests/harness/kuberay.py); waits until its Deployment is available."""
        from . import kuberay

        started = time.monotonic()
        self.kubectl_run("apply", "--server-side", "--force-conflicts", "-f", "-",
                         input=kuberay.install_manifest(self.kubectl, image))
        self.kubectl_run("rollout", "status", "-n", kuberay.NAMESPACE, "deployment/kuberay-operator",
                         "--timeout=180s")
        log(f"[kind] KubeRay {kuberay.VERSION} running in {kuberay.NAMESPACE} in {time.monotonic() - started:.0f}s")

    def load(self, image: str, nodes: list[str] | None = None) -> None:
        """`kind load docker-image` (kind skips nodes that already have the image)."""
        args = ["load", "docker-image", image, "--name", self.name]
        if nodes:
            args += ["--nodes", ",".join(nodes)]
        self.run_kind(*args)

    def delete(self, log=print) -> None:
        if self.exists():
            self.run_kind("delete", "cluster", "--name", self.name, "--kubeconfig", str(self.kubeconfig))
            log(f"[kind] deleted cluster {self.name}")


def main(argv: list[str]) -> int:
    """python -m tests.harness images|kind-up|kind-down [name]: the images, and a cluster from kind-config.yaml."""
    action, name = argv[0], (argv[1] if len(argv) > 1 and argv[1] else "mlcycle")
    if action == "images":
        started = time.monotonic()
        try:
            images.debian_base()
            # The project images spend their time downloading wheels, the Go builds on the CPUs: side by side.
            with ThreadPoolExecutor(1) as pool:
                project_build = pool.submit(images.project_images)
                node = node_image()
                prometheus = prometheus_image()
                metrics_server = metrics_server_image()
                from . import kuberay

                ray_operator = kuberay.operator_image()
                project = project_build.result()
        except BuildError as err:
            print(f"[images] {err}")
            return 1
        for tag in (node, prometheus, metrics_server, ray_operator, project.operator, project.runtime):
            print(f"  {tag:56} {images.size_mb(tag):,.0f} MB")
        print(f"[images] ready in {time.monotonic() - started:.0f}s")
        return 0
    cluster = KindCluster(name=name, directory=cache_root() / "kind" / name)
    try:
        if action == "up":
            if not cluster.exists():
                cluster.create()
            print(f"export KUBECONFIG={cluster.kubeconfig}")
        else:
            cluster.delete()
    except BuildError as err:
        print(f"[kind] {err}")
        return 1
    return 0

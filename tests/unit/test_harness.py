"""The control-plane harness's pure parts: pins that agree with each other, kubeconfigs, fake nodes."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from tests.harness import binaries
from tests.harness.cluster import KWOK_NODE_ANNOTATION, fake_node, kubeconfig


def _go_mod(name: str) -> str:
    return (binaries.GO_DIR / name / "go.mod").read_text()


def test_kubernetes_module_replaces_every_staging_module_with_the_matching_tag():
    text = _go_mod("kubernetes")
    assert f"k8s.io/kubernetes {binaries.KUBERNETES_VERSION}" in text
    staging_tag = "v0." + binaries.KUBERNETES_VERSION.removeprefix("v1.")
    replaces = re.findall(r"^\s*(k8s\.io/\S+) => (k8s\.io/\S+) (v\S+)$", text, re.MULTILINE)
    assert len(replaces) >= 30, "k8s.io/kubernetes has 30+ staging modules; all need a replace"
    for source, target, version in replaces:
        assert source == target
        assert version == staging_tag, f"{source} is replaced with {version}, not {staging_tag}"


def test_etcd_siblings_are_required_at_one_version():
    versions = re.findall(r"go\.etcd\.io/etcd/\S+ (v\S+)", _go_mod("etcd"))
    assert len(versions) >= 5
    assert set(versions) == {binaries.ETCD_VERSION}


@pytest.mark.parametrize(
    ("name", "module", "version"),
    [("kwok", "sigs.k8s.io/kwok", binaries.KWOK_VERSION), ("helm", "helm.sh/helm/v3", binaries.HELM_VERSION)],
)
def test_tool_modules_pin_the_declared_version(name, module, version):
    assert re.search(rf"^\s*(require )?{re.escape(module)} {re.escape(version)}$", _go_mod(name), re.MULTILINE)


def test_every_component_has_a_go_sum():
    for component in binaries.COMPONENTS.values():
        assert (component.module_dir / "go.sum").stat().st_size > 0, component.name


def test_install_dir_changes_with_link_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("MLCYCLE_CACHE", str(tmp_path))
    monkeypatch.setattr(binaries, "_go_version", lambda: "go1.26.8")
    component = binaries.COMPONENTS["kubernetes"]
    first = binaries.install_dir(component)
    assert first.parent == tmp_path / "bin"
    assert first.name.startswith(f"kubernetes-{binaries.KUBERNETES_VERSION}-")
    bumped = binaries.Component(
        name=component.name, version=component.version, commands=component.commands,
        ldflags=[*component.ldflags, "-X other=1"],
    )
    assert binaries.install_dir(bumped) != first
    monkeypatch.setattr(binaries, "_go_version", lambda: "go1.27.0")
    assert binaries.install_dir(component) != first


def test_version_ldflags_name_major_and_minor():
    flags = binaries._version_ldflags(["k8s.io/component-base/version"], "v1.37.2")
    assert "-X k8s.io/component-base/version.gitVersion=v1.37.2" in flags
    assert "-X k8s.io/component-base/version.gitMajor=1" in flags
    assert "-X k8s.io/component-base/version.gitMinor=37" in flags


def test_kubeconfig_inlines_certificates(tmp_path: Path):
    for name, content in (("ca.crt", b"CA"), ("c.crt", b"CERT"), ("c.key", b"KEY")):
        (tmp_path / name).write_bytes(content)
    config = kubeconfig("https://127.0.0.1:6443", tmp_path / "ca.crt", tmp_path / "c.crt", tmp_path / "c.key", "me")
    cluster = config["clusters"][0]["cluster"]
    user = config["users"][0]["user"]
    assert cluster["server"] == "https://127.0.0.1:6443"
    assert base64.b64decode(cluster["certificate-authority-data"]) == b"CA"
    assert base64.b64decode(user["client-certificate-data"]) == b"CERT"
    assert base64.b64decode(user["client-key-data"]) == b"KEY"
    assert config["current-context"] == config["contexts"][0]["name"]


def test_cpu_node_is_managed_by_kwok_and_untainted():
    node = fake_node("n0")
    key, value = KWOK_NODE_ANNOTATION
    assert node["metadata"]["annotations"][key] == value
    assert "taints" not in node["spec"]
    assert "nvidia.com/gpu" not in node["status"]["capacity"]


def test_gpu_node_advertises_gpus_behind_a_taint():
    node = fake_node("g0", gpus=4)
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "4"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "4"
    assert node["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]


def test_prometheus_discovers_annotated_running_pods_of_process_nodes():
    from kubernetes import client as k8s

    from tests.harness.prometheus import Prometheus

    def pod(name, node="process-node-e2e", phase="Running", ip="10.245.1.5", scrape="true", port="8080"):
        notes = {"prometheus.io/scrape": scrape, "prometheus.io/port": port, "prometheus.io/path": "/metrics"}
        return k8s.V1Pod(metadata=k8s.V1ObjectMeta(name=name, annotations=notes), spec=k8s.V1PodSpec(
            containers=[], node_name=node), status=k8s.V1PodStatus(phase=phase, pod_ip=ip))

    pods = [pod("router"), pod("fake", node="kwok-node-0"), pod("done", phase="Succeeded"),
            pod("quiet", scrape="false"), pod("starting", ip=None)]
    assert Prometheus.pod_targets(pods, "process-node.*") == [
        {"targets": ["127.245.1.5:8080"], "labels": {"__metrics_path__": "/metrics", "pod": "router"}}]


def test_process_node_pods_are_reached_from_the_host_on_loopback_only():
    from tests.harness.netns import host_address, prefix

    assert prefix(3) == "10.245.3."
    assert host_address("10.245.3.7") == "127.245.3.7"
    with pytest.raises(ValueError):
        host_address("192.168.1.7")  # only the node's own pod addresses have a loopback forward


def test_process_nodes_of_concurrent_runs_never_share_a_subnet(tmp_path, monkeypatch):
    import os

    from tests.harness import netns

    monkeypatch.setattr(netns, "LOCK_DIR", tmp_path)
    first, first_lock = netns.NodeNetwork._claim(1)
    second, second_lock = netns.NodeNetwork._claim(1)  # a second node wanting the same subnet gets another
    assert (first, second) == (1, 0)
    os.close(first_lock)  # the holder is gone (stopped, or killed: the kernel drops its lock)
    again, again_lock = netns.NodeNetwork._claim(1)
    assert again == 1
    for fd in (second_lock, again_lock):
        os.close(fd)


def test_process_node_addresses_cycle_through_its_subnet_skipping_held_ones(tmp_path):
    from types import SimpleNamespace

    from kubernetes import client as k8s

    from tests.harness.process_node import PodRun, ProcessNode

    node = ProcessNode(k8s.ApiClient(), tmp_path)
    node.network = SimpleNamespace(prefix="10.245.3.")
    assert [node._next_ip() for _ in range(3)] == ["10.245.3.2", "10.245.3.3", "10.245.3.4"]
    node._last_host = 250
    node.pods["held"] = PodRun("ns", "pod", "held", "10.245.3.2", tmp_path, "netns", "Always")
    assert [node._next_ip() for _ in range(2)] == ["10.245.3.251", "10.245.3.3"]  # .2 is still held

"""The harness's additions to kind-config.yaml: the user's file stays what users run, and what only these
machines need (built images' names, no kindnetd, cgroup v1, a missing capability) is added, never written back."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.harness import binaries, images, kind

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def machine(monkeypatch):
    def set_(v1: bool, lacks_cap: bool) -> None:
        monkeypatch.setattr(kind, "cgroup_v1", lambda: v1)
        monkeypatch.setattr(kind, "lacks_sys_resource", lambda: lacks_cap)
    return set_


def patches(config: dict, kind_name: str) -> list[dict]:
    return [p for p in map(yaml.safe_load, config.get("kubeadmConfigPatches", [])) if p["kind"] == kind_name]


def test_the_users_nodes_ports_and_labels_are_kept(machine):
    machine(False, False)
    user = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    config = kind.cluster_config(ROOT / "kind-config.yaml", name="mlcycle-test")
    assert config["nodes"] == user["nodes"]
    assert config["name"] == "mlcycle-test"
    assert yaml.safe_load((ROOT / "kind-config.yaml").read_text()) == user, "the user's file was changed"


def test_images_built_here_are_named_through_kubeadm(machine):
    machine(False, False)
    config = kind.cluster_config(ROOT / "kind-config.yaml")
    [cluster] = patches(config, "ClusterConfiguration")
    assert cluster["etcd"]["local"] == {"imageRepository": images.REGISTRY, "imageTag": binaries.ETCD_VERSION}
    assert cluster["dns"]["imageTag"] == binaries.CLUSTER_COMPONENTS["coredns"].version
    assert config["networking"]["disableDefaultCNI"] is True


@pytest.mark.parametrize(("v1", "lacks_cap"), [(True, True), (False, False), (True, False)])
def test_machine_workarounds_apply_only_where_needed(machine, v1, lacks_cap):
    machine(v1, lacks_cap)
    config = kind.cluster_config(ROOT / "kind-config.yaml")
    assert bool(patches(config, "KubeletConfiguration")) is v1
    if v1:
        assert patches(config, "KubeletConfiguration")[0]["failCgroupV1"] is False
    assert ("restrict_oom_score_adj" in "".join(config.get("containerdConfigPatches", []))) is lacks_cap


def test_the_docker_shim_exists_only_where_privileged_cannot_work(machine, tmp_path, monkeypatch):
    monkeypatch.setattr(kind.shutil, "which", lambda name: f"/usr/bin/{name}")
    machine(False, False)
    assert kind.docker_shim(tmp_path / "shim") is None
    machine(False, True)
    shim = kind.docker_shim(tmp_path / "shim")
    text = (shim / "docker").read_text()
    assert "--cap-drop=SYS_RESOURCE" in text and "--cap-add=ALL" in text
    assert text.rstrip().endswith('exec /usr/bin/docker "${args[@]}"')


def test_the_loop_on_kind_changes_only_the_claim_mode_and_the_router_service():
    from tests.harness import kind_loop, loop

    base, on_kind = loop.manifests(), kind_loop.manifests()
    assert on_kind["MLProject"]["spec"]["storage"]["pvc"]["accessMode"] == "ReadWriteOnce"
    assert on_kind["ModelDeployment"]["spec"]["service"] == {"type": "NodePort", "nodePort": 30080}
    del on_kind["MLProject"]["spec"]["storage"]["pvc"]["accessMode"]
    if not on_kind["MLProject"]["spec"]["storage"]["pvc"]:
        del on_kind["MLProject"]["spec"]["storage"]["pvc"]
    del on_kind["ModelDeployment"]["spec"]["service"]
    serving = on_kind["ModelDeployment"]["spec"]["serving"]
    assert serving["batching"]["enabled"] and serving["autoscaling"]["enabled"]  # as the example ships them
    assert (serving["autoscaling"]["minReplicas"], serving["autoscaling"]["maxReplicas"]) == (1, 3)
    serving.update(base["ModelDeployment"]["spec"]["serving"])
    assert on_kind == base

"""The operator killed (SIGKILL) at chosen points of a rollout and started again converges to the right final
state: a healthy canary is promoted exactly once, a failing one is rolled back exactly once, and nothing of a
version that left is left behind (DESIGN.md, reliability target). The kill points are states read from status,
so the test is deterministic; bench/operator_chaos.py kills at seeded-random moments instead.

The operator runs as its own process on a control plane of this module's own: the session's operator runs in the
test process (KopfRunner), watches every namespace of the session's cluster, and cannot be killed, so on that
cluster it would go on driving the rollout while ours is dead."""

from __future__ import annotations

import copy
import itertools
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from mlcycle_operator.resources.serving import version_name
from tests.harness import binaries
from tests.harness.cluster import LocalCluster
from tests.harness.operator_process import start_operator, stop_operator
from tests.harness.pytest_support import unavailable
from tests.integration.helpers import EXAMPLES, ROOT, Mlcycle, bind_models_volume, wait_for

pytestmark = pytest.mark.integration

NAME = "churn"
INTERVAL_S, FAILURE_LIMIT, SCALE_DOWN_DELAY_S = 4, 2, 3
VERSION_LABEL = "mlcycle.io/model-version"


# --- fixtures: a control plane, Prometheus and an operator process of this module's own -----------------------


@pytest.fixture(scope="module")
def own_cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """A one-node control plane with the mlcycle CRDs, stopped (every process, operators included) afterwards."""
    if shutil.which("go") is None and not all(binaries.install_dir(c).exists() for c in binaries.COMPONENTS.values()):
        unavailable("control plane", "no Go toolchain to build kube-apiserver, etcd and KWOK")
    try:
        paths = binaries.ensure_all(log=lambda *_: None)
    except binaries.BuildError as err:
        unavailable("control plane", str(err))
    cluster = LocalCluster(directory=Path(tempfile.mkdtemp(prefix="mlcycle-restart-")), binaries=paths,
                           nodes=1, gpu_nodes=0)
    cluster.start(log=lambda *_: None)
    failed_before = request.session.testsfailed
    try:
        install_crds(cluster)
        yield cluster
    finally:
        cluster.stop(log=lambda *_: None)
        if request.session.testsfailed == failed_before:
            shutil.rmtree(cluster.directory, ignore_errors=True)
        else:
            print(f"operator and control-plane logs kept in {cluster.directory / 'logs'}")


def install_crds(cluster: LocalCluster) -> None:
    ext = client.ApiextensionsV1Api(config.new_client_from_config(str(cluster.kubeconfig_path)))
    names = []
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        ext.create_custom_resource_definition(body)
        names.append(body["metadata"]["name"])
    poll(lambda: all(any(c.type == "Established" and c.status == "True"
                         for c in ext.read_custom_resource_definition(n).status.conditions or []) for n in names),
         30, "the CRDs to be Established")


@pytest.fixture(scope="module")
def own_prometheus(router_metrics, tmp_path_factory):
    """A real Prometheus scraping the router metrics every second (no pods to discover on this cluster)."""
    from tests.harness.prometheus import Prometheus

    if shutil.which("prometheus") is None:
        unavailable("Prometheus", "the 'prometheus' binary is not installed (make system-deps)")
    server = Prometheus(tmp_path_factory.mktemp("prometheus-restart"), targets=[router_metrics.target])
    server.start()
    yield server
    server.stop()


class Operators:
    """The operator process of the moment, killed and started again on demand; every kill is recorded."""

    def __init__(self, cluster: LocalCluster, prometheus_url: str):
        self.cluster = cluster
        self.env = {"MLCYCLE_PROMETHEUS_URL": prometheus_url, "MLCYCLE_LOG_LEVEL": "INFO"}
        self.process = start_operator(cluster, **self.env)
        self.kills: list[dict[str, Any]] = []

    def kill_and_restart(self, point: str, status: dict[str, Any],
                         while_down: Callable[[], None] | None = None) -> None:
        """SIGKILL now, where the status says the rollout is, then start a fresh operator; `while_down` runs in
        between (what the killed operator had done of its last reconcile when it died)."""
        killed, killed_at = time.monotonic(), time.time()
        code = stop_operator(self.cluster, self.process)
        if while_down is not None:
            while_down()
        self.process = start_operator(self.cluster, **self.env)
        self.kills.append({"point": point, "exit": code, "at": killed_at, "down_s": time.monotonic() - killed,
                           "traffic": status.get("trafficSummary"), "step": (status.get("rollout") or {}).get("step")})

    def stop(self) -> None:
        stop_operator(self.cluster, self.process)

    def log_tail(self, lines: int = 60) -> str:
        text = (self.cluster.directory / "logs" / "operator.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture
def operators(own_cluster, own_prometheus) -> Iterator[Operators]:
    ops = Operators(own_cluster, own_prometheus.url)
    yield ops
    ops.stop()


@pytest.fixture
def md_ns(own_cluster) -> Iterator[Mlcycle]:
    """A namespace with a volume bound in advance to the example project's claim."""
    api = config.new_client_from_config(str(own_cluster.kubeconfig_path))
    core = client.CoreV1Api(api)
    namespace = f"restart-{int(time.time() * 1000) % 10**8}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    pv = bind_models_volume(core, namespace)
    yield Mlcycle(api, namespace)
    core.delete_namespace(namespace)
    core.delete_persistent_volume(pv)
    api.close()


# --- helpers ----------------------------------------------------------------------------------------------------


def poll(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll fast, so that a kill lands right after the state it waits for is written."""
    return wait_for(predicate, timeout, what, every=every)


def restart_deployment(version: str) -> dict:
    """The example deployment pinned to a version: a short canary, autoscaled (so every version also has an HPA
    and a PodDisruptionBudget) and a short scaleDownDelay, so orphans would show within seconds."""
    md = copy.deepcopy(EXAMPLES["ModelDeployment"])
    md["spec"]["model"] = {"name": "churn-classifier", "version": version}
    md["spec"]["serving"]["autoscaling"] = {"enabled": True, "minReplicas": 2, "maxReplicas": 3,
                                            "targetCpuUtilization": 70}
    md["spec"]["strategy"] = {"type": "Canary", "scaleDownDelay": f"{SCALE_DOWN_DELAY_S}s", "canary": {
        # The first pause is longer than an analysis interval, so a run can pass while the step still holds.
        "steps": [{"weight": 20, "pause": "10s"}, {"weight": 60, "pause": "6s"}],
        "analysis": {"interval": f"{INTERVAL_S}s", "failureLimit": FAILURE_LIMIT, "metrics": [
            {"name": "error-rate", "type": "errorRate", "threshold": 0.05}]},
    }}
    return md


def children(ml: Mlcycle) -> list[dict[str, Any]]:
    """Every object of the kinds a ModelDeployment makes (and their ReplicaSets and Pods) in the namespace."""
    api = ml.core.api_client
    apps, autoscaling, policy = client.AppsV1Api(api), client.AutoscalingV2Api(api), client.PolicyV1Api(api)
    listers = {"Deployment": apps.list_namespaced_deployment, "Service": ml.core.list_namespaced_service,
               "ConfigMap": ml.core.list_namespaced_config_map,
               "HorizontalPodAutoscaler": autoscaling.list_namespaced_horizontal_pod_autoscaler,
               "PodDisruptionBudget": policy.list_namespaced_pod_disruption_budget,
               "ReplicaSet": apps.list_namespaced_replica_set, "Pod": ml.core.list_namespaced_pod}
    return [{**api.sanitize_for_serialization(item), "kind": kind}
            for kind, lister in listers.items() for item in lister(ml.namespace).items]


def orphans(ml: Mlcycle, keep: set[str]) -> list[str]:
    """What should not be there: anything of a model version outside `keep` (down to its Pods), and any object
    the operator made without an owner that still exists."""
    owners = {o["metadata"]["uid"] for kind in ("ModelDeployment", "MLProject") for o in ml.list(kind)}
    out = []
    for obj in children(ml):
        meta = obj["metadata"]
        labels = meta.get("labels") or {}
        refs = {ref["uid"] for ref in meta.get("ownerReferences") or []}
        version = labels.get(VERSION_LABEL)
        if version is not None and version not in keep:
            out.append(f"{obj['kind']}/{meta['name']} (version {version})")
        elif (obj["kind"] not in ("ReplicaSet", "Pod")  # owned by their Deployment and ReplicaSet, not by us
              and labels.get("app.kubernetes.io/managed-by") == "mlcycle-operator" and not refs & owners):
            out.append(f"{obj['kind']}/{meta['name']} (no live mlcycle owner)")
    return out


def not_owned_by_md(ml: Mlcycle, md_uid: str) -> list[str]:
    """Objects labelled as a ModelDeployment's child whose controller is not that ModelDeployment."""
    out = []
    for obj in children(ml):
        meta = obj["metadata"]
        if (meta.get("labels") or {}).get("mlcycle.io/owner-kind") != "modeldeployment":
            continue
        if obj["kind"] in ("ReplicaSet", "Pod"):
            continue  # owned by their Deployment / ReplicaSet, which are checked
        if not any(ref["uid"] == md_uid and ref.get("controller") for ref in meta.get("ownerReferences") or []):
            out.append(f"{obj['kind']}/{meta['name']}")
    return out


def events_starting(ml: Mlcycle, reason: str, prefix: str) -> list[str]:
    return [e for e in ml.events(NAME) if e.startswith(f"{reason}: {prefix}")]


def outcomes(status: dict[str, Any], version: str) -> list[str]:
    return [h["outcome"] for h in status.get("history") or [] if h["version"] == version]


def stamp(text: str) -> float:
    """A status timestamp (RFC 3339, whole seconds) as seconds since the epoch."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def router_table(ml: Mlcycle) -> dict[str, int]:
    """The routing table the router actually reads: its ConfigMap, not status."""
    data = ml.core.read_namespaced_config_map(f"{NAME}-router", ml.namespace).data
    routes = json.loads(next(iter(data.values())))["routes"]
    return {r["version"]: r["weight"] for r in routes}


# --- the test ---------------------------------------------------------------------------------------------------


def test_killed_operator_promotes_once_rolls_back_once_and_leaves_no_orphans(md_ns: Mlcycle, operators: Operators,
                                                                              router_metrics):
    ml = md_ns
    status = lambda: ml.status("ModelDeployment", NAME)  # noqa: E731

    def kill_when(point: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60) -> dict[str, Any]:
        reached = poll(lambda: (lambda s: predicate(s) and s)(status()), timeout, point)
        operators.kill_and_restart(point, reached)
        return reached

    try:
        ml.create(EXAMPLES["MLProject"])
        for version in ("v1", "v2"):
            router_metrics.set(ml.namespace, NAME, version, error_rate=0.0, latency_seconds=0.02)
        router_metrics.set(ml.namespace, NAME, "v3", error_rate=0.5, latency_seconds=0.02)
        md = ml.create(restart_deployment("v1"))
        poll(lambda: status().get("stableVersion") == "v1" and status().get("phase") == "Available", 90,
             "v1 serving", every=0.5)

        # A healthy v2, the operator killed at four points of its canary.
        ml.objects.patch_namespaced_custom_object("mlcycle.io", "v1alpha1", ml.namespace, "modeldeployments", NAME,
                                                  {"spec": {"model": {"version": "v2"}}})
        kill_when("v2 step 1, in its pause", lambda s: (s.get("rollout") or {}).get("stepStartedAt") is not None)
        kill_when("v2 right after an analysis run", lambda s: len((s.get("rollout") or {}).get("analysisRuns") or []))
        kill_when("v2 last step, before promotion", lambda s: (s.get("rollout") or {}).get("step") == 1)
        kill_when("v2 right after promotion", lambda s: outcomes(s, "v2") == ["Promoted"])
        poll(lambda: not orphans(ml, {"v2"}) and status(), 60, "v1's servers removed after scaleDownDelay",
             every=0.5)
        final = status()
        assert final["stableVersion"] == "v2" and final.get("candidateVersion") is None and not final.get("rollout")
        assert final["trafficSummary"] == "v2=100" and router_table(ml) == {"v2": 100}
        assert outcomes(final, "v2") == ["Promoted"], final["history"]
        promoted_events = events_starting(ml, "Promoted", "Promoted v2 ")
        assert len(promoted_events) == 1, promoted_events
        assert not not_owned_by_md(ml, md["metadata"]["uid"])

        # A failing v3, killed as its canary starts, after its first failed run and right after the rollback.
        ml.objects.patch_namespaced_custom_object("mlcycle.io", "v1alpha1", ml.namespace, "modeldeployments", NAME,
                                                  {"spec": {"model": {"version": "v3"}}})
        started = kill_when("v3 step 1, in its pause",
                            lambda s: (s.get("rollout") or {}).get("stepStartedAt") is not None)
        kill_when("v3 after its first failed run", lambda s: (s.get("rollout") or {}).get("failures", 0) >= 1)
        ended = kill_when("v3 right after rollback", lambda s: outcomes(s, "v3") == ["RolledBack"])
        # From the operator's own timestamps: v3's first traffic to the rollback decision, less the time no
        # operator was running (it cannot roll back while dead).
        first_traffic, rolled_back = stamp(started["rollout"]["stepStartedAt"]), stamp(ended["history"][-1]["time"])
        rolled_back_after = rolled_back - first_traffic
        up_s = rolled_back_after - sum(max(0.0, min(k["at"] + k["down_s"], rolled_back) - max(k["at"], first_traffic))
                                       for k in operators.kills)
        # A rolled-back version is not tried again while the spec still asks for it: the reconcile that removed
        # v3's servers after scaleDownDelay (by the operator restarted after the rollback) cleared status.retiring
        # with the spec still asking for v3, and started nothing.
        final = poll(lambda: not orphans(ml, {"v2"}) and not (s := status()).get("retiring") and s, 60,
                     "v3's servers removed after scaleDownDelay", every=0.5)
        assert final["stableVersion"] == "v2" and final.get("candidateVersion") is None and not final.get("rollout")
        assert final["trafficSummary"] == "v2=100" and router_table(ml) == {"v2": 100}
        assert outcomes(final, "v3") == ["RolledBack"] and outcomes(final, "v2") == ["Promoted"], final["history"]
        rolled_back_events = events_starting(ml, "RolledBack", "Rolled back v3,")
        assert len(rolled_back_events) == 1, rolled_back_events
        assert len(events_starting(ml, "Promoted", "Promoted v2 ")) == 1
        assert not not_owned_by_md(ml, md["metadata"]["uid"])
        assert [k["exit"] for k in operators.kills] == [-9] * 7, operators.kills
        # Interval x failureLimit across the restarts, counted in analysis runs rather than seconds (the measured
        # figure is the benchmark's business): the rollback came on the failureLimit-th failed run, so a restart
        # neither lost a failure nor counted one twice, with at most one run before it that had no data yet (the
        # first run is due one interval into the step), all in the first step, and runs one interval apart at
        # least, so a restart did not bring the next run forward.
        runs = ended["history"][-1]["analysisRuns"]
        verdicts = [run["verdict"] for run in runs]
        assert verdicts.count("Fail") == FAILURE_LIMIT and verdicts[-1] == "Fail", runs
        assert len(runs) <= FAILURE_LIMIT + 1 and all(run.get("step", 0) == 0 for run in runs), runs
        times = [stamp(run["time"]) for run in runs]
        assert all(b - a >= INTERVAL_S for a, b in itertools.pairwise(times)), runs
        assert first_traffic <= times[0] and times[-1] == rolled_back, (started["rollout"], ended["history"][-1])
        print(f"kills: {operators.kills}; v3 rolled back {rolled_back_after:.1f}s after its first traffic, "
              f"{up_s:.1f}s of it with an operator up")
    except BaseException:
        print(f"operator log (tail):\n{operators.log_tail()}")
        raise


def test_a_kill_while_a_version_retires_leaves_none_of_its_children(md_ns: Mlcycle, operators: Operators,
                                                                     router_metrics):
    """Issue #18: the operator killed while it removed a rolled-back version's servers (its Deployment and Service
    deleted, not yet its ConfigMap, HPA and PDB). The kill lands while status.retiring names the version; what the
    killed operator had deleted of it is done while no operator runs, since the moment itself is milliseconds
    wide. The next operator must finish the removal."""
    ml = md_ns
    status = lambda: ml.status("ModelDeployment", NAME)  # noqa: E731
    apps = client.AppsV1Api(ml.core.api_client)
    leaving = version_name(NAME, "v2")

    def first_half_of_the_removal() -> None:
        kinds = {o["kind"] for o in children(ml) if (o["metadata"].get("labels") or {}).get(VERSION_LABEL) == "v2"}
        assert {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds, (
            f"the kill came after the removal had begun: {kinds}")
        apps.delete_namespaced_deployment(leaving, ml.namespace, propagation_policy="Background")
        ml.core.delete_namespaced_service(leaving, ml.namespace)

    try:
        ml.create(EXAMPLES["MLProject"])
        router_metrics.set(ml.namespace, NAME, "v1", error_rate=0.0, latency_seconds=0.02)
        router_metrics.set(ml.namespace, NAME, "v2", error_rate=0.5, latency_seconds=0.02)
        md = restart_deployment("v1")
        md["spec"]["strategy"]["scaleDownDelay"] = "10s"  # time enough to kill before the removal begins
        ml.create(md)
        poll(lambda: status().get("stableVersion") == "v1" and status().get("phase") == "Available", 90,
             "v1 serving", every=0.5)
        ml.objects.patch_namespaced_custom_object("mlcycle.io", "v1alpha1", ml.namespace, "modeldeployments", NAME,
                                                  {"spec": {"model": {"version": "v2"}}})
        retiring = poll(lambda: (lambda s: s.get("retiring") == ["v2"] and s)(status()), 60,
                        "v2 rolled back and retiring")
        operators.kill_and_restart("v2 retiring, its Deployment and Service deleted", retiring,
                                   while_down=first_half_of_the_removal)
        poll(lambda: not orphans(ml, {"v1"}) and status(), 60, "the rest of v2's children removed", every=0.5)
        final = status()
        assert not final.get("retiring") and final["stableVersion"] == "v1" and final["trafficSummary"] == "v1=100"
        assert outcomes(final, "v2") == ["RolledBack"]
        assert [k["exit"] for k in operators.kills] == [-9], operators.kills
    except BaseException:
        print(f"operator log (tail):\n{operators.log_tail()}")
        raise

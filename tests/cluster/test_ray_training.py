"""Distributed training for real: KubeRay's operator (built here from its Go module) in the kind cluster, and a
TrainingJob whose RayJob runs a head and worker pods from the runtime image, Tune with ASHA over data-parallel
XGBoost through Ray Train, its workers on more than one pod.

This module runs after the others of the tier (its name sorts last) and takes KubeRay away when it is done: the
operator chooses a RayJob over a batch Job only while KubeRay is installed, and the other modules test the Job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlcycle_operator.resources import training as builders
from tests.cluster.conftest import RELEASE, SYSTEM_NAMESPACE, WORKERS, KindHandle, _log
from tests.cluster.test_containers import (
    MISSING_IMAGE,
    apply,
    churn_in_claim,
    conditions,
    events,
    finished,
    get,
    training_job,
)
from tests.harness import kuberay
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.cluster


def _restart_operator(h: KindHandle) -> None:
    """A fresh operator asks discovery at once whether RayJobs are served (a running one notices within a
    minute, docs/trainingjob.md): the tests do not wait out that minute."""
    h.kubectl("rollout", "restart", "-n", SYSTEM_NAMESPACE, f"deployment/{RELEASE}")
    h.kubectl("rollout", "status", "-n", SYSTEM_NAMESPACE, f"deployment/{RELEASE}", "--timeout=120s")


@pytest.fixture(scope="module")
def ray(chart: KindHandle, request: pytest.FixtureRequest) -> Iterator[KindHandle]:
    """KubeRay installed from its module's manifests, with the image built here; removed afterwards."""
    log = _log(request)
    image = kuberay.operator_image(log=log)
    chart.cluster.load(image, list(WORKERS))
    chart.cluster.install_kuberay(image, log=log)
    _restart_operator(chart)
    yield chart
    manifest = kuberay.install_manifest(chart.cluster.kubectl, image)
    chart.kubectl("delete", "--ignore-not-found", "--timeout=120s", "-f", "-", input=manifest, check=False)
    _restart_operator(chart)


@pytest.fixture
def churn(ray: KindHandle, kube_namespace: str, tmp_path: Path) -> str:
    return churn_in_claim(ray, kube_namespace, tmp_path, rows=4000)


def ray_pods(h: KindHandle, namespace: str, cluster: str) -> list[dict]:
    out = h.kubectl("get", "pods", "-n", namespace, "-l", f"ray.io/cluster={cluster}", "-o", "json")
    return json.loads(out.stdout)["items"]


# Run in a Ray pod: whether a Ray Train worker process runs there. Ray sets the worker's title (its cmdline) to
# ray::RayTrainWorker...; the title is matched at the start, since this script's own cmdline holds the name too.
TRAINING_HERE = """
import pathlib, sys
def training(cmdline):
    try:
        return cmdline.read_bytes().startswith(b"ray::RayTrainWorker")
    except OSError:  # the process has gone
        return False
sys.exit(0 if any(training(p) for p in pathlib.Path("/proc").glob("[0-9]*/cmdline")) else 1)
"""


def training_on(h: KindHandle, namespace: str, pod: str) -> bool:
    return h.kubectl("exec", "-n", namespace, pod, "--", "python", "-c", TRAINING_HERE, check=False).returncode == 0


def distributed_job(name: str, workers: int = 2) -> dict:
    job = training_job(name, memory="2Gi")
    # Each pod runs Ray's own processes besides its share of the training: below 2Gi Ray's memory monitor kills
    # workers, and at a quarter CPU each starting a Ray Train worker group took a minute.
    job["spec"]["distribution"] = {"workers": workers, "cpuPerWorker": 0.5, "memoryPerWorker": "2Gi"}
    job["spec"]["tuning"] = {"numSamples": 2, "metric": "roc_auc", "mode": "max", "maxConcurrentTrials": 1,
                             "scheduler": {"type": "asha", "gracePeriod": 5},
                             "searchSpace": {"max_depth": {"type": "randint", "lower": 2, "upper": 6}}}
    return job


def test_a_training_job_runs_across_ray_worker_pods_through_kuberay(ray: KindHandle, churn: str,
                                                                      request: pytest.FixtureRequest):
    """workers: 2 becomes a RayJob with a head and two worker pods; Ray Train's workers run on both; the job
    Succeeds with the status a one-pod job gives, and KubeRay deletes the Ray cluster when the job is done."""
    ns, log = churn, _log(request)
    created = time.monotonic()
    apply(ray, ns, distributed_job("churn-dist"))
    workload = builders.workload_name("churn-dist")
    cluster = wait_for(lambda: (get(ray, ns, "rayjob", workload).get("status") or {}).get("rayClusterName"),
                       timeout=60, what="the RayJob's Ray cluster", every=2)

    def running_workers() -> list[str]:
        return [p["metadata"]["name"] for p in ray_pods(ray, ns, cluster)
                if p["metadata"]["labels"].get("ray.io/node-type") == "worker"
                and p["status"].get("phase") == "Running"]

    workers = wait_for(lambda: len(names := running_workers()) == 2 and names, timeout=300, every=2,
                       what="two Ray worker pods running")
    log(f"[ray] TrainingJob created -> Ray workers running in {time.monotonic() - created:.0f}s")

    job = finished(ray, ns, "churn-dist", timeout=600)
    log(f"[ray] TrainingJob created -> {job['phase']} in {time.monotonic() - created:.0f}s")
    assert job["phase"] == "Succeeded", json.dumps(job, indent=1)[:4000]
    assert job["workload"] == {"kind": "RayJob", "name": workload}
    # What a one-pod job reports, all of it.
    assert job["gatesPassed"] is True and job["model"]["version"] and job["metrics"]["roc_auc"] > 0.6, job
    assert job["trials"]["total"] == 2 and job["lineage"]["rows"]["train"] > 0, job
    # Ray Train's workers ran on both worker pods (pod names are the hosts), none on the head.
    assert sorted(job["lineage"]["hosts"]) == sorted(workers), (job["lineage"]["hosts"], workers)

    # The trainer reports before its process ends: KubeRay sees the Ray job end a moment later.
    wait_for(lambda: ((s := get(ray, ns, "rayjob", workload)["status"]).get("jobStatus"),
                      s.get("jobDeploymentStatus")) == ("SUCCEEDED", "Complete"), timeout=120, every=2,
             what="the RayJob Complete and SUCCEEDED")
    # shutdownAfterJobFinishes: KubeRay deletes the Ray cluster ttlSecondsAfterFinished after the end.
    wait_for(lambda: not ray_pods(ray, ns, cluster) and not get(ray, ns, "raycluster", cluster),
             timeout=builders.RAY_CLUSTER_TTL_SECONDS + 120, every=3, what=f"KubeRay to delete Ray cluster {cluster}")
    submitter = ray.kubectl("logs", "-n", ns, f"job/{workload}").stdout
    assert "saved to" in submitter, submitter[-2000:]


def degraded_in_words(h: KindHandle, namespace: str, name: str, reason: str, *needles: str,
                      timeout: float = 300) -> dict:
    """The TrainingJob's Degraded condition once it has `reason` and says every one of `needles`, and a Warning
    Event of the job saying them too."""
    seen: dict = {}

    def says() -> dict | None:
        seen["Degraded"] = degraded = conditions(get(h, namespace, "trainingjob", name)).get("Degraded") or {}
        ok = degraded.get("reason") == reason and all(n in degraded.get("message", "") for n in needles)
        return degraded if ok else None

    try:
        degraded = wait_for(says, timeout=timeout, every=3,
                            what=f"TrainingJob {name} Degraded {reason} saying {needles}")
    except pytest.fail.Exception as err:
        pytest.fail(f"{err}; its Degraded condition: {seen.get('Degraded')}")
    wait_for(lambda: any(reason in e and all(n in e for n in needles) for e in events(h, namespace, name)),
             timeout=30, what=f"a {reason} Event of {name}")
    return degraded


def test_a_ray_worker_pod_killed_mid_training_fails_the_job_naming_the_pod(ray: KindHandle, churn: str):
    ns = churn
    job = distributed_job("churn-killed")
    job["spec"]["tuning"]["numSamples"] = 1
    # Long enough for the kill to land while the workers train.
    job["spec"]["model"]["params"]["num_boost_round"] = 2000
    apply(ray, ns, job)
    workload = builders.workload_name("churn-killed")
    cluster = wait_for(lambda: (get(ray, ns, "rayjob", workload).get("status") or {}).get("rayClusterName"),
                       timeout=60, what="the RayJob's Ray cluster", every=2)
    # The trainer prints a running trial's latest round (docs/runtime.md): once one is out, the worker group has
    # started on both pods and trains. Phase Training and a RayTrainWorker process come earlier, while the worker
    # group still starts, and Ray Train retries a start that failed rather than failing the job.
    wait_for(lambda: "round " in ray.kubectl("logs", "-n", ns, f"job/{workload}", check=False).stdout,
             timeout=420, every=3, what="a training round in the trainer's output (kubectl logs job/...)")
    workers = [p["metadata"]["name"] for p in ray_pods(ray, ns, cluster)
               if p["metadata"]["labels"].get("ray.io/node-type") == "worker"]
    victim = wait_for(lambda: next((w for w in workers if training_on(ray, ns, w)), None), timeout=300, every=1,
                      what=f"a Ray Train worker process on {workers}")
    ray.kubectl("delete", "pod", "-n", ns, victim, "--grace-period=0", "--force")
    status = finished(ray, ns, "churn-killed", timeout=300)
    assert status["phase"] == "Failed", json.dumps(status, indent=1)[:3000]
    degraded = degraded_in_words(ray, ns, "churn-killed", "TrainingFailed", victim, "Ray lost pod", timeout=60)
    assert "while training" in degraded["message"], degraded


def test_a_head_image_that_does_not_exist_and_a_request_no_node_can_hold_are_said_naming_the_pod(
        ray: KindHandle, churn: str):
    """Both wait in the cluster (a pull that cannot succeed, a pod no node can take) and both are said in words,
    with the pod: the image and the scheduler's message."""
    ns = churn
    missing = distributed_job("churn-no-image")
    missing["spec"]["image"] = MISSING_IMAGE
    ray.expected_pulls.add(MISSING_IMAGE)
    huge = distributed_job("churn-huge")
    huge["spec"]["distribution"]["cpuPerWorker"] = 64
    apply(ray, ns, missing, huge)
    pulled = degraded_in_words(ray, ns, "churn-no-image", "ImagePullFailed", MISSING_IMAGE, "-head-")
    assert "cannot be pulled" in pulled["message"], pulled
    unschedulable = degraded_in_words(ray, ns, "churn-huge", "Unschedulable", "cannot be scheduled",
                                      "Insufficient cpu")
    assert "churn-huge-train-" in unschedulable["message"], unschedulable


def test_a_ray_worker_over_its_memory_limit_fails_the_job_naming_the_pod(ray: KindHandle, kube_namespace: str,
                                                                         tmp_path: Path):
    """Deep trees over fine bins: XGBoost's histograms take several GB in each training worker, past its 2Gi;
    the head, which trains nothing, is not touched. Whoever kills the worker (Ray's memory monitor or the kernel),
    the job fails saying out of memory, the pod, and memoryPerWorker."""
    ns = churn_in_claim(ray, kube_namespace, tmp_path, rows=30_000)
    job = distributed_job("churn-greedy")
    job["spec"]["tuning"]["numSamples"] = 1
    job["spec"]["tuning"].pop("searchSpace")
    job["spec"]["model"]["params"].update(max_depth=20, max_bin=65536, min_child_weight=0)
    apply(ray, ns, job)
    status = finished(ray, ns, "churn-greedy", timeout=420)
    assert status["phase"] == "Failed", json.dumps(status, indent=1)[:3000]
    degraded = degraded_in_words(ray, ns, "churn-greedy", "TrainingFailed", "memoryPerWorker", "-workers-worker-")
    assert "out of memory on pod" in degraded["message"] or "OOM killer" in degraded["message"], degraded

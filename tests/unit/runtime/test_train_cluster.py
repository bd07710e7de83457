"""Whether a distribution fits the CPUs and GPUs at hand, decided before any trial waits for them."""

from __future__ import annotations

import pytest

from mlcycle_runtime.config import Distribution
from mlcycle_runtime.train import cluster


def dist(**kw) -> Distribution:
    return Distribution.model_validate(kw)


@pytest.mark.parametrize(("spec", "cpus", "gpus", "at_once"), [
    ({"workers": 2, "cpuPerWorker": 1}, 2, 0, 1),
    ({"workers": 3, "cpuPerWorker": 0.5}, 2, None, 1),
    ({"workers": 1, "cpuPerWorker": 1, "gpuPerWorker": 1}, 4, 1, 1),
    ({"workers": 1, "cpuPerWorker": 1, "gpuPerWorker": 1}, 4, 3, 3),
    ({"workers": 2, "cpuPerWorker": 0.5}, 5, 0, 5),
    # A RayJob's cluster: one worker pod per worker, each with cpuPerWorker, the head none.
    ({"workers": 2, "cpuPerWorker": 0.5}, 1, 0, 1),
])
def test_a_distribution_within_the_resources_fits_and_says_how_many_trials_at_once(spec, cpus, gpus, at_once):
    assert cluster.fits(dist(**spec), cpus, gpus) == at_once


def test_too_many_cpus_are_refused_naming_both_sides():
    with pytest.raises(cluster.ResourceError) as err:
        cluster.fits(dist(workers=64, cpuPerWorker=1), 2, where="this machine")
    assert str(err.value) == "distribution asks 64 workers x 1.0 CPU but this machine has 2 CPUs"


def test_missing_gpus_are_refused_when_the_cluster_counts_them():
    with pytest.raises(cluster.ResourceError, match=r"asks 2 workers x 1.0 CPU x 1 GPU but the Ray cluster has "
                                                    r"8 CPUs and 1 GPUs"):
        cluster.fits(dist(workers=2, cpuPerWorker=1, gpuPerWorker=1), 8, 1)


def test_a_local_ray_takes_what_the_workers_ask_up_to_the_machine():
    assert cluster.local_cpus(dist(workers=1, cpuPerWorker=1)) == 1
    assert cluster.local_cpus(dist(workers=1000, cpuPerWorker=1)) == cluster.machine_cpus()


NODES = [
    {"NodeManagerAddress": "10.244.1.8", "NodeManagerHostname": "churn-v1-train-x7k2p-head-4hq9z", "Alive": True},
    {"NodeManagerAddress": "10.244.1.9", "NodeManagerHostname": "churn-v1-train-x7k2p-workers-worker-5w7px",
     "Alive": True},
    {"NodeManagerAddress": "10.244.1.10", "NodeManagerHostname": "churn-v1-train-x7k2p-workers-worker-wk5sb",
     "Alive": True},
]
# What Ray's memory monitor writes when it kills a worker (Ray 2.60), shortened.
MEMORY_KILL = ("ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory.\n"
               "Memory on the node (IP: 10.244.1.9, ID: 3fa0c1) where the task (actor ID: 77ab, name=RayTrainWorker."
               "__init__, pid=412, memory used=0.61GB) was running was 1.43GB / 1.50GB (0.953), which exceeds the "
               "memory usage threshold of 0.95. Ray killed this worker (ID: 9c1e) because it was the most recently "
               "scheduled task")


# Ray 2.56 and later.
MEMORY_KILL_NOW = ("ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory.\n"
                   "Memory on the node (IP: 10.244.1.9, ID: 3fa0c1) was 1.90GB used / 2.00GB limit (0.951), which "
                   "exceeds the memory usage threshold of 0.95.")


@pytest.mark.parametrize(("text", "amounts"), [(MEMORY_KILL, "1.43GB of 1.50GB"),
                                               (MEMORY_KILL_NOW, "1.90GB of 2.00GB")])
def test_a_worker_killed_by_rays_memory_monitor_is_named_by_its_pod_with_what_to_raise(text, amounts):
    said = cluster.describe("WorkerGroupError: Training failed due to worker errors", text, NODES)
    assert said.startswith("out of memory on pod churn-v1-train-x7k2p-workers-worker-5w7px: ")
    assert amounts in said and "raise memoryPerWorker" in said
    assert said.endswith("Ray said: WorkerGroupError: Training failed due to worker errors")


def test_a_ray_node_lost_during_training_is_named_by_its_pod():
    nodes = [*NODES[:2], {**NODES[2], "Alive": False}]
    said = cluster.describe("ActorDiedError: The actor died unexpectedly", "ActorDiedError: ...", nodes)
    assert said.startswith("Ray lost pod churn-v1-train-x7k2p-workers-worker-wk5sb while training")
    assert said.endswith("Ray said: ActorDiedError: The actor died unexpectedly")


def test_an_error_ray_knows_nothing_more_of_is_left_as_it_is():
    assert cluster.describe("bad data: 3 problems", "bad data: 3 problems", NODES) == "bad data: 3 problems"


def test_the_whole_text_of_a_worker_group_error_includes_each_workers_own_error():
    class WorkerGroupError(Exception):
        worker_failures = {0: RuntimeError(MEMORY_KILL)}

    text = cluster.full_text(WorkerGroupError("Training failed due to worker errors: ... (Output truncated)"))
    assert "Memory on the node (IP: 10.244.1.9" in text and "Output truncated" in text


PROCESS_DIED = ("ActorDiedError: The actor died unexpectedly before finishing this task.\n"
                "\tclass_name: RayTrainWorker\n\tactor_id: 77ab\n\tpid: 412\n\tnamespace: 5e1c\n\tip: 10.244.1.10\n"
                "The actor is dead because its "
                "worker process has died. Worker exit type: SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits "
                "with a connection error code 2. End of file. Some common causes include: (1) the process was killed "
                "by the OOM killer due to high memory usage")


def test_a_worker_process_killed_without_a_word_is_named_by_its_pod_as_a_likely_oom_kill():
    said = cluster.describe("every trial failed (1 of 1): ...", PROCESS_DIED, NODES)
    assert said.startswith("a training worker's process on pod churn-v1-train-x7k2p-workers-worker-wk5sb was "
                           "killed (most often by the kernel's OOM killer")
    assert "memoryPerWorker" in said


def test_workers_go_one_per_pod_strictly_on_a_ray_cluster_and_anywhere_on_a_local_ray(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "head-svc:6379")
    assert cluster.placement_strategy() == "STRICT_SPREAD"
    monkeypatch.delenv("RAY_ADDRESS")
    assert cluster.placement_strategy() == "SPREAD"


class FakeRay:
    """Ray's node table as it changes: the worker's connection drops first, its node is marked dead later."""

    def __init__(self, *tables: list[dict]) -> None:
        self.tables, self.calls = list(tables), 0

    def nodes(self) -> list[dict]:
        self.calls += 1
        return self.tables.pop(0) if len(self.tables) > 1 else self.tables[0]


def test_a_failure_waits_for_ray_to_mark_the_dead_workers_node_before_naming_the_cause(monkeypatch):
    monkeypatch.setattr(cluster.time, "sleep", lambda _: None)
    gone = [*NODES[:2], {**NODES[2], "Alive": False}]
    ray = FakeRay(NODES, NODES, gone)
    nodes = cluster._nodes_once_settled(ray, PROCESS_DIED)
    assert (nodes, ray.calls) == (gone, 3)
    said = cluster.describe("every trial failed (1 of 1): ...", PROCESS_DIED, nodes)
    assert said.startswith("Ray lost pod churn-v1-train-x7k2p-workers-worker-wk5sb while training")


def test_a_failure_that_names_no_dead_process_asks_ray_once(monkeypatch):
    monkeypatch.setattr(cluster, "NODE_DEATH_WAIT_S", 0.0)
    ray = FakeRay(NODES)
    assert cluster._nodes_once_settled(ray, "bad data") == NODES and ray.calls == 1
    assert cluster._nodes_once_settled(ray, PROCESS_DIED) == NODES and ray.calls == 2  # alive, and time is up


PEER_LOST = ("WorkersFailed: ...\nPeerLost: XGBoost's collective communication with another training worker failed (a "
             "worker or its pod was lost): [09:58:16] /__w/xgboost/xgboost/src/collective/result.cc:83: ...")


def test_a_worker_that_lost_its_peer_waits_for_the_dead_node_and_names_its_pod(monkeypatch):
    monkeypatch.setattr(cluster.time, "sleep", lambda _: None)
    gone = [*NODES[:2], {**NODES[2], "Alive": False}]
    ray = FakeRay(NODES, gone)
    nodes = cluster._nodes_once_settled(ray, PEER_LOST)
    assert (nodes, ray.calls) == (gone, 2)
    assert cluster.describe("every trial failed (1 of 1): ...", PEER_LOST, nodes).startswith(
        "Ray lost pod churn-v1-train-x7k2p-workers-worker-wk5sb while training")


def test_a_memory_kill_is_said_at_once_even_beside_a_lost_peer():
    ray = FakeRay(NODES)
    assert cluster._nodes_once_settled(ray, MEMORY_KILL + "\n" + PEER_LOST) == NODES and ray.calls == 1


def test_a_trial_whose_actor_died_waits_for_the_dead_node_and_names_its_pod(monkeypatch):
    monkeypatch.setattr(cluster.time, "sleep", lambda _: None)
    text = "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.\n\tactor_id: ae"
    gone = [*NODES[:2], {**NODES[2], "Alive": False}]
    ray = FakeRay(NODES, NODES, gone)
    assert cluster._nodes_once_settled(ray, text) == gone and ray.calls == 3

"""Ray for one training run: a local Ray sized by the distribution spec, or the RayJob's cluster (RAY_ADDRESS)."""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import tempfile
import time
from pathlib import Path

from mlcycle_runtime import storage
from mlcycle_runtime.config import Distribution, TrainConfig

# Where Ray keeps checkpoints when several nodes must see them; otherwise a directory under /tmp.
STORAGE_ENV = "MLCYCLE_RAY_STORAGE"


class ResourceError(Exception):
    """The Ray cluster cannot hold one trial as the distribution spec asks."""


def machine_cpus() -> int:
    """CPUs this process may use (its affinity mask, which a container's cpuset limits)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def local_cpus(dist: Distribution) -> int:
    """CPUs for a local Ray: what the workers ask for, capped at the machine's."""
    return max(1, min(machine_cpus(), math.ceil(dist.workers * dist.cpu_per_worker)))


def quiet() -> None:
    """Keep Ray's own output out of the job log: the trainer prints its progress itself."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    for name in ("ray", "ray.tune", "ray.train", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


def start(dist: Distribution) -> bool:
    """Connect to RAY_ADDRESS or start a local Ray under /tmp; True when this process started it."""
    import ray

    quiet()
    # Tune retries a trial whose actor died with a preempted node (a deleted or evicted pod) without counting it,
    # forever; a Ray Train worker lost the same way fails the trial (FailureConfig max_failures=0). One rule for
    # both: a lost pod fails the trial, and the job says which pod.
    os.environ.setdefault("RAY_TRAIN_COUNT_PREEMPTION_AS_FAILURE", "1")
    if ray.is_initialized():
        return False
    common = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **common)
        return False
    # A local Ray can hold no more CPUs than the machine has: refuse before paying for its start.
    fits(dist, machine_cpus(), where="this machine")
    ray.init(num_cpus=local_cpus(dist), num_gpus=dist.gpu_per_worker * dist.workers or None,
             _temp_dir=os.environ.get("RAY_TMPDIR", str(Path(tempfile.gettempdir()) / "ray")), **common)
    return True


def stop(started: bool) -> None:
    import ray

    if started and ray.is_initialized():
        ray.shutdown()


def fits(dist: Distribution, cpus: float, gpus: float | None = None, where: str = "the Ray cluster") -> int:
    """How many trials' workers `cpus` (and `gpus`, when known) hold at once; refuses a trial they can never hold
    (Tune would wait for it forever)."""
    need_cpu, need_gpu = dist.workers * dist.cpu_per_worker, dist.workers * dist.gpu_per_worker
    if need_cpu > cpus or (gpus is not None and need_gpu > gpus):
        raise ResourceError(
            f"distribution asks {dist.workers} workers x {dist.cpu_per_worker} CPU"
            + (f" x {dist.gpu_per_worker} GPU" if dist.gpu_per_worker else "")
            + f" but {where} has {cpus:g} CPUs" + (f" and {gpus:g} GPUs" if gpus is not None else ""))
    at_once = math.floor(cpus / need_cpu)  # cpuPerWorker > 0 (config)
    if gpus is not None and need_gpu:
        at_once = min(at_once, math.floor(gpus / need_gpu))
    return max(1, at_once)


def trials_at_once(dist: Distribution) -> int:
    """How many trials' workers the running Ray cluster holds at once; refuses a trial it can never hold."""
    import ray

    have = ray.cluster_resources()
    return fits(dist, have.get("CPU", 0), have.get("GPU", 0))


# Ray's resource on its head node. A data-parallel trial's driver (Tune's trial actor, and with it the Ray Train
# controller and its actors, which Ray Train places on the controller's node) asks a sliver of it, so it runs on
# the head, which the operator sizes for it, never in a worker pod beside a training worker sized for that alone.
HEAD_RESOURCE = "node:__internal_head__"
ON_HEAD = {HEAD_RESOURCE: 0.001}
TRIAL_DRIVER = {"cpu": 0, **ON_HEAD}


def placement_strategy() -> str:
    """How Ray Train places its workers: one per node on a RayJob's cluster (STRICT_SPREAD: a worker waits for its
    own pod rather than share another's memory), anywhere on a local Ray (one node)."""
    return "STRICT_SPREAD" if os.environ.get("RAY_ADDRESS") else "SPREAD"


def storage_path(config: TrainConfig, scratch: Path) -> str:
    """Where Ray Train and Tune keep run files: shared storage on a multi-node cluster, else local scratch."""
    if os.environ.get(STORAGE_ENV):
        return os.environ[STORAGE_ENV]
    if os.environ.get("RAY_ADDRESS"):
        # Workers on other pods must reach the checkpoints: the project storage is mounted on every pod.
        url = storage.resolve(storage.join(config.storage.uri, config.project, "_ray", config.name))
        return url.removeprefix("file://")
    return str(scratch)


def train_worker_hosts() -> list[str]:
    """The hosts (pod names, on Kubernetes) Ray Train's workers ran on, sorted. A local Ray runs them all here; on
    a Ray cluster they are read from Ray's State API (the head's dashboard), [] if it does not answer."""
    if not os.environ.get("RAY_ADDRESS"):
        return [socket.gethostname()]
    import ray
    from ray.util.state import list_actors

    try:
        actors = list_actors(filters=[("class_name", "=", "RayTrainWorker")], limit=10_000,
                             raise_on_missing_output=False)
        hosts = {node["NodeID"]: node["NodeManagerHostname"] for node in ray.nodes()}
    except Exception as err:  # the State API is an aid here, not a reason to fail a trained model
        logging.getLogger(__name__).warning("could not read where Ray Train's workers ran: %s", err)
        return []
    return sorted({hosts.get(actor.node_id, actor.node_id) for actor in actors})


# Ray's memory monitor, when it kills a worker: "Memory on the node (IP: 10.244.1.9, ID: ...) was 1.90GB used /
# 2.00GB limit (0.95...)" (Ray 2.56 on; before: "... where the task (...) was running was 1.43GB / 1.50GB").
_MEMORY_KILL = re.compile(r"Memory on the node \(IP: (?P<ip>[0-9.]+), ID: \w+\)(?: where the task .*? was running)? "
                          r"was (?P<used>[0-9.]+ ?[KMGT]?i?B)(?: used)? / (?P<total>[0-9.]+ ?[KMGT]?i?B)", re.S)

# A worker process that ended without a word (SIGKILL: the kernel's OOM killer at the pod's memory limit, most
# often), as Ray reports its actor: "... ip: 10.244.1.9 ... Worker unexpectedly exits with a connection error code".
_PROCESS_DIED = "Worker unexpectedly exits"
_ACTOR_IP = re.compile(r"\bip: (?P<ip>[0-9]+(?:\.[0-9]+){3})")


def full_text(error: BaseException | str) -> str:
    """An error's whole text: Ray Train's WorkerGroupError shortens each worker's traceback in its message, and
    keeps the workers' own exceptions beside it."""
    if isinstance(error, str):
        return error
    failures = getattr(error, "worker_failures", None) or {}
    return "\n".join([str(error), *(f"{type(e).__name__}: {e}" for e in failures.values())])


def explain(message: str, error: BaseException | str | None = None) -> str:
    """`message`, preceded by what the Ray cluster knows of the cause (`describe`); unchanged off a Ray cluster."""
    if not os.environ.get("RAY_ADDRESS"):
        return message
    text = full_text(error if error is not None else message)
    try:
        import ray

        if not ray.is_initialized():
            return message
        nodes = _nodes_once_settled(ray, text)
    except Exception:  # the cluster is what failed: Ray's own words are all there is
        return message
    return describe(message, text, nodes)


# How long a failure waits for Ray to decide whether a worker's node died with it: the worker's connection drops
# at once when its pod goes, the node is marked dead after missed health checks (about 15 s by Ray's defaults).
NODE_DEATH_WAIT_S = 30.0


# What learners.PeerLost says: XGBoost's collective layer failed in a surviving worker as its peer went.
PEER_LOST = "XGBoost's collective communication with another training worker failed"
# What a lost pod looks like in the failure before Ray marks its node dead: an actor on it (the trial, a worker)
# "died unexpectedly", or a surviving worker lost its peer.
_LOSS_SIGNS = ("died unexpectedly", PEER_LOST)


def _nodes_once_settled(ray, text: str) -> list[dict]:
    """ray.nodes(); where `text` says a worker process died and its node is still alive, or shows another sign of a
    lost pod (_LOSS_SIGNS) and no node is dead yet, asked again for up to NODE_DEATH_WAIT_S, so that a lost pod is
    said as one and not as a dead actor or a broken connection. Not when Ray's memory monitor says why."""
    nodes = ray.nodes()
    died = _ACTOR_IP.search(text) if _PROCESS_DIED in text else None
    if _MEMORY_KILL.search(text) or not (died or any(sign in text for sign in _LOSS_SIGNS)):
        return nodes

    def settled(nodes: list[dict]) -> bool:
        if died:
            return not any(n.get("NodeManagerAddress") == died["ip"] and n.get("Alive") for n in nodes)
        return any(not n.get("Alive") for n in nodes)

    deadline = time.monotonic() + NODE_DEATH_WAIT_S
    while not settled(nodes) and time.monotonic() < deadline:
        time.sleep(2)
        nodes = ray.nodes()
    return nodes


def describe(message: str, text: str, nodes: list[dict]) -> str:
    """`message` preceded by the cause and the pod, where `text` (the error's whole text) and Ray's `nodes`
    (ray.nodes(): on Kubernetes a node is a pod, its hostname the pod's name) show one: a worker that Ray's memory
    monitor killed, nodes that died (a pod deleted, evicted or killed) while the job ran, or a worker process killed
    without a word (the kernel's OOM killer, most often)."""
    pods = {n.get("NodeManagerAddress"): n.get("NodeManagerHostname") for n in nodes}
    killed = _MEMORY_KILL.search(text)
    if killed:
        pod = pods.get(killed["ip"]) or killed["ip"]
        return (f"out of memory on pod {pod}: Ray's memory monitor killed a training worker there at "
                f"{killed['used']} of {killed['total']} (the pod's memory limit, distribution.memoryPerWorker); "
                f"raise memoryPerWorker. Ray said: {message}")
    dead = sorted(n.get("NodeManagerHostname") or n.get("NodeManagerAddress") for n in nodes if not n.get("Alive"))
    if dead:
        return (f"Ray lost {'pod' if len(dead) == 1 else 'pods'} {', '.join(dead)} while training (deleted, "
                f"evicted or killed: `kubectl get events` says which); Ray said: {message}")
    died = _ACTOR_IP.search(text) if _PROCESS_DIED in text else None
    if died:
        pod = pods.get(died["ip"]) or died["ip"]
        return (f"a training worker's process on pod {pod} was killed (most often by the kernel's OOM killer at the "
                f"pod's memory limit, distribution.memoryPerWorker: raise it); Ray said: {message}")
    return message

"""Ray for one training run: a local Ray sized by the distribution spec, or the RayJob's cluster (RAY_ADDRESS)."""

from __future__ import annotations

import logging
import math
import os
import tempfile
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


def fits(dist: Distribution, cpus: float, gpus: float | None = None, where: str = "the Ray cluster") -> None:
    """Refuse a trial that `cpus` (and `gpus`, when known) can never hold: Tune would wait for it forever."""
    need_cpu, need_gpu = dist.workers * dist.cpu_per_worker, dist.workers * dist.gpu_per_worker
    if need_cpu > cpus or (gpus is not None and need_gpu > gpus):
        raise ResourceError(
            f"distribution asks {dist.workers} workers x {dist.cpu_per_worker} CPU"
            + (f" x {dist.gpu_per_worker} GPU" if dist.gpu_per_worker else "")
            + f" but {where} has {cpus:g} CPUs" + (f" and {gpus:g} GPUs" if gpus is not None else ""))


def check_fits(dist: Distribution) -> None:
    """Refuse a trial the running Ray cluster can never schedule."""
    import ray

    have = ray.cluster_resources()
    fits(dist, have.get("CPU", 0), have.get("GPU", 0))


def storage_path(config: TrainConfig, scratch: Path) -> str:
    """Where Ray Train and Tune keep run files: shared storage on a multi-node cluster, else local scratch."""
    if os.environ.get(STORAGE_ENV):
        return os.environ[STORAGE_ENV]
    if os.environ.get("RAY_ADDRESS"):
        # Workers on other pods must reach the checkpoints: the project storage is mounted on every pod.
        url = storage.resolve(storage.join(config.storage.uri, config.project, "_ray", config.name))
        return url.removeprefix("file://")
    return str(scratch)

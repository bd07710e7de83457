"""Whether a distribution fits the CPUs and GPUs at hand, decided before any trial waits for them."""

from __future__ import annotations

import pytest

from mlcycle_runtime.config import Distribution
from mlcycle_runtime.train import cluster


def dist(**kw) -> Distribution:
    return Distribution.model_validate(kw)


@pytest.mark.parametrize(("spec", "cpus", "gpus"), [
    ({"workers": 2, "cpuPerWorker": 1}, 2, 0),
    ({"workers": 3, "cpuPerWorker": 0.5}, 2, None),
    ({"workers": 1, "cpuPerWorker": 1, "gpuPerWorker": 1}, 4, 1),
])
def test_a_distribution_within_the_resources_fits(spec, cpus, gpus):
    assert cluster.fits(dist(**spec), cpus, gpus) is None


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

"""Children of a TrainingJob: its runtime config and the workload that runs it (RayJob or batch Job)."""

from __future__ import annotations

from typing import Any

from ..api.common import Resources
from ..api.mlproject import MLProjectSpec
from ..api.trainingjob import TrainingJobSpec
from ..units import parse_duration, parse_quantity
from . import common, project
from .common import Meta

KIND = "TrainingJob"
COMPONENT = "training"
SUBMITTER_COMPONENT = "training-submitter"


def config_map_name(job: str) -> str:
    return common.child_name(job, "train-config")


def workload_name(job: str) -> str:
    return common.child_name(job, "train")


def training_config(spec: TrainingJobSpec, meta: Meta, project_spec: MLProjectSpec,
                    champion: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON the trainer reads (runtime contract): the job spec plus what the operator resolved."""
    tuning = spec.tuning
    objective = project_spec.objective.metric
    return {
        "kind": KIND,
        "name": meta.name,
        "namespace": meta.namespace,
        "project": spec.project,
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        "objective": objective.model_dump(mode="json", by_alias=True, exclude_none=True),
        "metric": (tuning.metric if tuning and tuning.metric else objective.name),
        "mode": (tuning.mode if tuning and tuning.mode else ("max" if objective.direction == "maximize" else "min")),
        "storage": {"uri": project_spec.storage.uri, "modelPath": f"{spec.project}/models/{spec.output.model_name}"},
        "featureStore": ({"repoPath": "/etc/feast"} if project_spec.feature_store else None),
        "champion": champion,
        "report": {"statusField": "result"},
    }


def config_map(spec: TrainingJobSpec, meta: Meta, config: dict[str, Any]) -> dict[str, Any]:
    return common.config_map(
        config_map_name(meta.name), meta.namespace,
        common.labels(KIND, meta.name, COMPONENT, project=spec.project),
        {common.CONFIG_FILE: common.config_json(config)},
    )


def _cpu(cores: float) -> str:
    """CPU as the API server writes it back ("2", "500m"), so a re-apply compares equal."""
    return str(int(cores)) if float(cores).is_integer() else f"{round(cores * 1000)}m"


def _worker_resources(spec: TrainingJobSpec) -> Resources:
    dist = spec.distribution
    return Resources(
        cpu=_cpu(dist.cpu_per_worker),
        memory=dist.memory_per_worker,
        gpu=dist.gpu_per_worker,
    )


def _pod_spec(spec: TrainingJobSpec, meta: Meta, project_spec: MLProjectSpec, image: str,
              resources: Resources, *, restart: str, api: bool = True) -> dict[str, Any]:
    """A trainer pod; `api` where the trainer runs (it reports into the TrainingJob's status), not on Ray's
    worker pods."""
    volumes, mounts = project.workload_volumes(project_spec, spec.project, config_map_name(meta.name),
                                               feature_store=True)
    container = common.container(
        "trainer", image, project_spec.defaults.image_pull_policy, common.resource_requirements(resources), mounts,
        command=common.runtime_command("train"),
        # Ray keeps its session files under /tmp; the root filesystem is read-only.
        env=[*common.downward_env(), {"name": "RAY_TMPDIR", "value": "/tmp/ray"}],
        env_from=project.storage_env_from(project_spec))
    return project.workload_pod(spec.project, container, volumes, resources, api=api, restartPolicy=restart)


def batch_job(spec: TrainingJobSpec, meta: Meta, project_spec: MLProjectSpec, image: str) -> dict[str, Any]:
    """Without KubeRay: one pod that starts a local Ray and runs every worker in it (so it needs their sum)."""
    dist = spec.distribution
    resources = Resources.model_construct(
        cpu=_cpu(dist.cpu_per_worker * dist.workers),
        memory=dist.memory_per_worker if dist.workers == 1 else _times(dist.memory_per_worker, dist.workers),
        gpu=dist.gpu_per_worker * dist.workers,
    )
    lbls = common.labels(KIND, meta.name, COMPONENT, project=spec.project)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": workload_name(meta.name), "namespace": meta.namespace, "labels": lbls},
        "spec": {
            "backoffLimit": spec.backoff_limit,
            "activeDeadlineSeconds": int(parse_duration(spec.active_deadline)),
            "ttlSecondsAfterFinished": 7 * 24 * 3600,
            "template": {
                "metadata": {"labels": lbls},
                "spec": _pod_spec(spec, meta, project_spec, image, resources, restart="Never"),
            },
        },
    }


# KubeRay deletes a RayJob's Ray cluster (head and workers) this long after the job ends (its
# shutdownAfterJobFinishes): long enough for the operator's next look at the pods, which says why a job failed.
RAY_CLUSTER_TTL_SECONDS = 30
# The submitter pod KubeRay starts for the job (`ray job submit`, then the job's logs until it ends): so
# `kubectl logs job/<job>-train` shows the trainer's output. It runs no training.
SUBMITTER_RESOURCES = Resources.model_construct(cpu="100m", memory="512Mi", gpu=0)


def _submitter_pod(spec: TrainingJobSpec, image: str, pull_policy: str) -> dict[str, Any]:
    tmp_volume, tmp_mount = common.scratch_volume()
    container = common.container("ray-job-submitter", image, pull_policy,
                                 common.resource_requirements(SUBMITTER_RESOURCES), [tmp_mount])
    return project.workload_pod(spec.project, container, [tmp_volume], api=False, restartPolicy="Never")


# What a data-parallel trial adds to the head, where the trainer pins it (runtime cluster.TRIAL_DRIVER): its Tune
# trial actor, Ray Train controller and synchronization and dataset actors, a Python process each (measured on kind:
# about 0.8 GiB together, beside Ray's control plane and the trainer's ~1.2 GiB). Worker pods hold one trial's
# workers, so one trial runs at a time on a RayJob's cluster.
HEAD_TRIAL_MEMORY = 2**30


def ray_job(spec: TrainingJobSpec, meta: Meta, project_spec: MLProjectSpec, image: str) -> dict[str, Any]:
    """With KubeRay: a RayJob whose cluster has one head and `workers` worker pods. The head runs Ray's control
    plane, the trainer (the job's driver) and the running trial's driver, but no training: it offers Ray no CPU
    (num-cpus 0), so Ray Train's workers are placed on the worker pods, one per pod, each with `cpuPerWorker`,
    `memoryPerWorker`, `gpuPerWorker`. The head gets `memoryPerWorker` plus HEAD_TRIAL_MEMORY for the trial."""
    lbls = common.labels(KIND, meta.name, COMPONENT, project=spec.project)
    dist = spec.distribution
    head_resources = Resources.model_construct(cpu=_cpu(dist.cpu_per_worker),
                                               memory=_plus(dist.memory_per_worker, HEAD_TRIAL_MEMORY), gpu=0)
    head = _pod_spec(spec, meta, project_spec, image, head_resources, restart="Never")
    head["containers"][0]["name"] = "ray-head"
    head["containers"][0].pop("command")
    worker = _pod_spec(spec, meta, project_spec, image, _worker_resources(spec), restart="Never", api=False)
    worker["containers"][0]["name"] = "ray-worker"
    worker["containers"][0].pop("command")
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": workload_name(meta.name), "namespace": meta.namespace, "labels": lbls},
        "spec": {
            "entrypoint": " ".join(common.runtime_command("train")),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": RAY_CLUSTER_TTL_SECONDS,
            "activeDeadlineSeconds": int(parse_duration(spec.active_deadline)),
            "backoffLimit": spec.backoff_limit,
            "submitterPodTemplate": {
                "metadata": {"labels": {**lbls, common.LABEL_COMPONENT: SUBMITTER_COMPONENT}},
                "spec": _submitter_pod(spec, image, project_spec.defaults.image_pull_policy),
            },
            "rayClusterSpec": {
                # The dashboard serves the job-submission API: the submitter pod and KubeRay reach it through the
                # head's Service, and the job's NetworkPolicy admits no one else (docs/trainingjob.md).
                "headGroupSpec": {"rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                                  "template": {"metadata": {"labels": lbls}, "spec": head}},
                "workerGroupSpecs": [{
                    "groupName": "workers", "replicas": dist.workers, "minReplicas": dist.workers,
                    "maxReplicas": dist.workers, "rayStartParams": {},
                    "template": {"metadata": {"labels": lbls}, "spec": worker},
                }],
            },
        },
    }


# Ray's dashboard on a head: the job-submission API, job status and logs (and the State API).
DASHBOARD_PORT = 8265
# KubeRay's operator pods, as both its Helm chart and its kustomize manifests label them.
KUBERAY_OPERATOR_LABELS = {"app.kubernetes.io/component": "kuberay-operator"}


def network_policy_name(job: str) -> str:
    return common.child_name(job, "ray")


def ray_network_policy(spec: TrainingJobSpec, meta: Meta, kuberay_namespace: str = "") -> dict[str, Any]:
    """Who may connect to the pods of a RayJob's Ray cluster: each other, on any port (GCS, raylets, object
    transfers); and on the dashboard port (job submission, status, logs) the job's own submitter pod and KubeRay's
    operator, which polls the job's status there. Nobody else: any pod could otherwise submit code to the head.
    Enforced where the cluster's network plugin enforces NetworkPolicy."""
    labels = common.labels(KIND, meta.name, COMPONENT, project=spec.project)
    ray_pods = {"matchLabels": labels}
    submitter = {"matchLabels": common.labels(KIND, meta.name, SUBMITTER_COMPONENT, project=spec.project)}
    kuberay: dict[str, Any] = {"podSelector": {"matchLabels": dict(KUBERAY_OPERATOR_LABELS)},
                               "namespaceSelector": ({"matchLabels": {"kubernetes.io/metadata.name": kuberay_namespace}}
                                                     if kuberay_namespace else {})}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": network_policy_name(meta.name), "namespace": meta.namespace, "labels": dict(labels)},
        "spec": {
            "podSelector": ray_pods,
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": ray_pods}]},
                {"from": [{"podSelector": submitter}, kuberay],
                 "ports": [{"protocol": "TCP", "port": DASHBOARD_PORT}]},
            ],
        },
    }


_BINARY_SUFFIXES = (("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10))


def _plus(quantity: int | str, extra_bytes: int) -> str:
    """A memory quantity plus `extra_bytes`, written as the API server writes it back (3Gi, not 3072Mi), so a
    re-apply compares equal."""
    total = round(parse_quantity(quantity)) + extra_bytes
    for suffix, size in _BINARY_SUFFIXES:
        if total % size == 0:
            return f"{total // size}{suffix}"
    return str(total)


def _times(quantity: int | str, factor: int) -> str:
    """Multiply a memory quantity such as 2Gi by a whole number, keeping its unit."""
    text = str(quantity)
    digits = len(text) - len(text.lstrip("0123456789."))
    number, unit = text[:digits], text[digits:]
    value = float(number) * factor
    return f"{int(value) if value.is_integer() else value}{unit}"

"""Children of a BatchPrediction: its runtime config, and a Job (one run) or a CronJob (a schedule) that runs
`python -m mlcycle_runtime.batch` in the runtime image."""

from __future__ import annotations

from typing import Any

from ..api.batchprediction import BatchPredictionSpec
from ..api.mlproject import MLProjectSpec
from ..units import parse_duration
from . import common, project
from .common import Meta

KIND = "BatchPrediction"
COMPONENT = "batch-prediction"
# Kept this long after it finishes, so `kubectl logs` still shows what a run did the next morning.
JOB_TTL_SECONDS = 7 * 24 * 3600


def config_map_name(name: str) -> str:
    return common.child_name(name, "batch-config")


def workload_name(name: str) -> str:
    # A CronJob's Jobs are named <cronjob>-<minute stamp> (11 more characters), within the 63 of a label value.
    return common.child_name(name, "batch", limit=52)


def batch_config(spec: BatchPredictionSpec, meta: Meta, model: dict[str, Any]) -> dict[str, Any]:
    """The JSON the scorer reads (runtime contract): the spec's input and output, and the model version the
    operator resolved (a tracked model is resolved here, so a run never mixes versions)."""
    return {
        "kind": KIND,
        "name": meta.name,
        "namespace": meta.namespace,
        "project": spec.project,
        "model": model,
        "input": spec.input.model_dump(mode="json", by_alias=True),
        "output": spec.output.model_dump(mode="json", by_alias=True),
        "maxInvalidFraction": spec.max_invalid_fraction,
        "batchSize": spec.batch_size,
        "report": {"statusField": "report"},
    }


def config_map(spec: BatchPredictionSpec, meta: Meta, config: dict[str, Any]) -> dict[str, Any]:
    return common.config_map(config_map_name(meta.name), meta.namespace,
                             common.labels(KIND, meta.name, COMPONENT, project=spec.project),
                             {common.CONFIG_FILE: common.config_json(config)})


def data_claims(spec: BatchPredictionSpec, project_spec: MLProjectSpec) -> list[str]:
    """pvc:// claims of the input and output other than the project's model store (which every workload mounts)."""
    own = project.pvc_claim_name(project_spec)
    claims = [uri.removeprefix("pvc://").split("/", 1)[0] for uri in (spec.input.uri, spec.output.uri)
              if uri.startswith("pvc://")]
    return sorted({c for c in claims if c != own})


def _pod_spec(spec: BatchPredictionSpec, meta: Meta, project_spec: MLProjectSpec, image: str) -> dict[str, Any]:
    """The scorer's pod: the project's identity with its API token (it reports into the BatchPrediction's status),
    the config, a writable /tmp, the project storage and any other claim the input or output is on."""
    volumes, mounts = project.workload_volumes(project_spec, spec.project, config_map_name(meta.name))
    for i, claim in enumerate(data_claims(spec, project_spec)):
        volumes.append({"name": f"data-{i}", "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": f"data-{i}", "mountPath": f"/mnt/pvc/{claim}"})
    container = common.container(
        "scorer", image, project_spec.defaults.image_pull_policy, common.resource_requirements(spec.resources), mounts,
        command=common.runtime_command("batch"), env=common.downward_env(),
        env_from=project.storage_env_from(project_spec))
    return project.workload_pod(spec.project, container, volumes, spec.resources, api=True, restartPolicy="Never")


def _job_spec(spec: BatchPredictionSpec, meta: Meta, project_spec: MLProjectSpec, image: str) -> dict[str, Any]:
    lbls = common.labels(KIND, meta.name, COMPONENT, project=spec.project)
    return {
        "backoffLimit": spec.backoff_limit,
        "activeDeadlineSeconds": int(parse_duration(spec.active_deadline)),
        "ttlSecondsAfterFinished": JOB_TTL_SECONDS,
        "template": {"metadata": {"labels": lbls}, "spec": _pod_spec(spec, meta, project_spec, image)},
    }


def job(spec: BatchPredictionSpec, meta: Meta, project_spec: MLProjectSpec, image: str) -> dict[str, Any]:
    """One run, now."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": workload_name(meta.name), "namespace": meta.namespace,
                     "labels": common.labels(KIND, meta.name, COMPONENT, project=spec.project)},
        "spec": _job_spec(spec, meta, project_spec, image),
    }


def cron_job(spec: BatchPredictionSpec, meta: Meta, project_spec: MLProjectSpec, image: str) -> dict[str, Any]:
    """A run on every tick of the schedule; its Jobs carry the same labels, so the operator's cache sees them."""
    schedule = spec.schedule
    assert schedule is not None
    lbls = common.labels(KIND, meta.name, COMPONENT, project=spec.project)
    body: dict[str, Any] = {
        "schedule": schedule.cron,
        "concurrencyPolicy": schedule.concurrency_policy,
        "suspend": schedule.suspend,
        "successfulJobsHistoryLimit": schedule.successful_runs_history_limit,
        "failedJobsHistoryLimit": schedule.failed_runs_history_limit,
        "jobTemplate": {"metadata": {"labels": lbls}, "spec": _job_spec(spec, meta, project_spec, image)},
    }
    if schedule.time_zone:
        body["timeZone"] = schedule.time_zone
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": workload_name(meta.name), "namespace": meta.namespace, "labels": lbls},
        "spec": body,
    }


def workload(spec: BatchPredictionSpec, meta: Meta, project_spec: MLProjectSpec, image: str) -> dict[str, Any]:
    return (cron_job if spec.schedule else job)(spec, meta, project_spec, image)

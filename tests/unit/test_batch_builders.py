"""BatchPrediction: the Job and CronJob built from the example, the config the scorer reads, and the status decided
from the scorer's report and the Job (pure functions, no cluster)."""

from __future__ import annotations

import copy
import json

import pytest
from pydantic import ValidationError

from mlcycle_operator import batchstatus
from mlcycle_operator.api.batchprediction import BatchPredictionSpec
from mlcycle_operator.api.mlproject import MLProjectSpec
from mlcycle_operator.resources import batch, common, project
from mlcycle_operator.resources.common import Meta
from mlcycle_runtime import config as runtime_config
from tests.unit.test_builders import IMAGE, MODEL_URI, NAMESPACE, PROJECT_DOC, VERSION, WORKLOAD_SA, _load, merged

BATCH_DOC = _load("05-batchprediction.yaml")
META = Meta(name="churn-nightly", namespace=NAMESPACE, uid="b-uid")
MODEL = {"name": "churn-classifier", "version": VERSION, "uri": MODEL_URI, "trainingJob": "churn-v1"}
NOW = "2026-12-06T02:10:00Z"


def spec(**changes) -> BatchPredictionSpec:
    return BatchPredictionSpec.model_validate(merged(BATCH_DOC["spec"], changes))


PROJECT = MLProjectSpec.model_validate(PROJECT_DOC["spec"])
ONE_SHOT = {"schedule": None}


def test_a_one_shot_run_is_a_job_of_the_scorer_restricted_and_reporting():
    job = batch.workload(spec(**ONE_SHOT), META, PROJECT, IMAGE)
    assert job["kind"] == "Job" and job["metadata"]["name"] == "churn-nightly-batch"
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 6 * 3600
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["python", "-m", "mlcycle_runtime.batch", "--config", "/etc/mlcycle/config.json"]
    assert container["securityContext"] == common.restricted_container_security()
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "1Gi"}
    # It reports into its own status: the project's identity with the API token.
    assert pod["serviceAccountName"] == WORKLOAD_SA and pod["automountServiceAccountToken"] is True
    assert pod["restartPolicy"] == "Never"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/mlcycle", "/tmp", "/mnt/pvc/churn-models"} <= mounts
    assert job["spec"]["template"]["metadata"]["labels"][common.LABEL_COMPONENT] == batch.COMPONENT


def test_a_schedule_is_a_cron_job_that_skips_a_run_while_one_runs():
    cron = batch.workload(spec(), META, PROJECT, IMAGE)
    assert cron["kind"] == "CronJob" and cron["spec"]["schedule"] == "0 2 * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["suspend"] is False
    assert (cron["spec"]["successfulJobsHistoryLimit"], cron["spec"]["failedJobsHistoryLimit"]) == (3, 3)
    assert "timeZone" not in cron["spec"]
    template = cron["spec"]["jobTemplate"]
    # Its Jobs carry the operator's labels: the cache (managed-by) sees them.
    assert template["metadata"]["labels"]["app.kubernetes.io/managed-by"] == common.MANAGED_BY
    assert template["spec"]["template"]["spec"]["containers"][0]["command"][2] == "mlcycle_runtime.batch"
    zoned = batch.workload(spec(schedule={"cron": "@daily", "timeZone": "Europe/Berlin",
                                          "concurrencyPolicy": "Replace", "suspend": True}), META, PROJECT, IMAGE)
    assert zoned["spec"]["timeZone"] == "Europe/Berlin" and zoned["spec"]["concurrencyPolicy"] == "Replace"
    assert zoned["spec"]["suspend"] is True


def test_a_long_name_leaves_room_for_the_cron_jobs_run_names():
    long = Meta(name="n" * 63, namespace=NAMESPACE)
    name = batch.workload(spec(), long, PROJECT, IMAGE)["metadata"]["name"]
    assert len(name) <= 52 and len(name + "-29000000") <= 63


def test_claims_of_the_input_and_output_are_mounted_where_the_scorer_looks():
    other = spec(input={"uri": "pvc://warehouse/customers/"}, output={"uri": "s3://bucket/predictions"})
    assert batch.data_claims(other, PROJECT) == ["warehouse"]
    pod = batch.job(other, META, PROJECT, IMAGE)["spec"]["template"]["spec"]
    assert {"name": "data-0", "persistentVolumeClaim": {"claimName": "warehouse"}} in pod["volumes"]
    assert {"name": "data-0", "mountPath": "/mnt/pvc/warehouse"} in pod["containers"][0]["volumeMounts"]
    assert batch.data_claims(spec(), PROJECT) == []  # the example's claim is the project's, mounted anyway


def test_the_scorer_reads_the_config_the_operator_renders():
    rendered = batch.batch_config(spec(), META, MODEL)
    parsed = runtime_config.parse(runtime_config.BatchConfig, json.loads(common.config_json(rendered)))
    assert parsed.name == "churn-nightly" and parsed.namespace == NAMESPACE
    assert (parsed.model.version, parsed.model.uri, parsed.model.training_job) == (VERSION, MODEL_URI, "churn-v1")
    assert parsed.input.uri == "pvc://churn-models/data/customers.parquet" and parsed.input.passthrough == [
        "customer_id"]
    assert parsed.max_invalid_fraction == 0.01 and parsed.batch_size == 65536
    assert parsed.report.status_field == "report"
    config_map = batch.config_map(spec(), META, rendered)
    assert config_map["metadata"]["name"] == "churn-nightly-batch-config"


def test_workloads_may_report_into_a_batch_predictions_status():
    rules = project.workload_role(PROJECT, Meta(name="churn", namespace=NAMESPACE))["rules"]
    assert any("batchpredictions/status" in r["resources"] and set(r["verbs"]) == {"get", "patch"} for r in rules)


@pytest.mark.parametrize(("changes", "words"), [
    ({"model": {"name": "churn-classifier", "version": "v1", "track": {}}}, None),  # CEL: the API server's part
    ({"input": {"uri": "ftp://data"}}, "should match"),
    ({"output": {"uri": "customers"}}, "should match"),
    ({"schedule": {"cron": "nightly"}}, "should match"),
    ({"schedule": {"cron": "@daily", "concurrencyPolicy": "Sometimes"}}, "Input should be"),
    ({"maxInvalidFraction": 1.5}, "less than or equal to 1"),
    ({"batchSize": 0}, "greater than or equal to 1"),
    ({"activeDeadline": "0s"}, "longer than 0s"),
])
def test_the_models_refuse_what_the_schema_refuses(changes, words):
    if words is None:
        spec(**changes)  # exactly-one-of is a CEL rule, checked by the API server (tests/integration)
        return
    with pytest.raises(ValidationError) as refused:
        spec(**changes)
    assert words in str(refused.value)


# --- status -------------------------------------------------------------------------------------------------------


def report(phase: str, **fields) -> dict:
    return {"phase": phase, "runId": "20261206-020000-abc123", "modelVersion": VERSION, "rowsScored": 1000,
            "rowsRefused": 2, "rowsPerSecond": 5000.0, "startTime": "2026-12-06T02:00:00Z",
            "model": {"name": "churn-classifier", "version": VERSION}, **fields}


def job_with(condition: str, reason: str = "", at: str = "2026-12-06T02:05:00Z") -> dict:
    return {"kind": "Job", "metadata": {"name": "churn-nightly-batch"}, "status": {"conditions": [
        {"type": condition, "status": "True", "reason": reason, "message": "", "lastTransitionTime": at}]}}


def test_a_run_goes_from_pending_to_running_to_succeeded_with_its_figures():
    running = batchstatus.observe_run({"phase": "Pending", "report": report("Running")}, None, [], 1, NOW)
    assert running.status["phase"] == "Running" and running.status["rowsScored"] == 1000
    assert "output" not in running.status
    assert running.events == [("Normal", "PhaseChanged", "Pending -> Running")]
    done = report("Succeeded", output="pvc://x/20261206-020000-abc123", fingerprint="sha256:f",
                  completionTime="2026-12-06T02:00:05Z", durationSeconds=5.0)
    observed = batchstatus.observe_run({"phase": "Running", "report": done}, job_with("Complete"), [], 1, NOW)
    status = observed.status
    assert status["phase"] == "Succeeded" and status["output"] == "pvc://x/20261206-020000-abc123"
    assert status["fingerprint"] == "sha256:f" and status["durationSeconds"] == 5.0
    assert status["completionTime"] == "2026-12-06T02:00:05Z"
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "Finished")
    assert observed.events[-1][:2] == ("Normal", "Succeeded")
    assert "scored 1,000 rows (2 refused) with churn-classifier version" in observed.events[-1][2]
    assert batchstatus.observe_run({"phase": "Succeeded"}, None, [], 1, NOW).status == {}


def test_a_failed_run_says_why_and_publishes_no_output():
    error = "120 of 1,000 rows (12.00%) cannot be scored, more than maxInvalidFraction 1.00%; nothing was published"
    observed = batchstatus.observe_run({"phase": "Running", "report": report("Failed", error=error)}, None, [], 1,
                                       NOW)
    assert observed.status["phase"] == "Failed" and "output" not in observed.status
    degraded = next(c for c in observed.status["conditions"] if c["type"] == "Degraded")
    assert (degraded["reason"], degraded["message"]) == ("ScoringFailed", error)
    assert ("Warning", "Failed", error) in observed.events


def test_a_job_that_ends_without_a_report_or_past_its_deadline_fails():
    silent = batchstatus.observe_run({"phase": "Pending"}, job_with("Complete", at="2026-12-06T02:09:00Z"), [], 1,
                                     NOW)
    assert silent.status["phase"] == "Failed"
    assert "the scorer exited without reporting a result" in silent.events[-1][2]
    soon = batchstatus.observe_run({"phase": "Pending"}, job_with("Complete", at="2026-12-06T02:09:55Z"), [], 1, NOW)
    assert soon.status["phase"] == "Pending", "the last report may still be on its way"
    late = batchstatus.observe_run({"phase": "Running", "report": report("Running")},
                                   job_with("Failed", "DeadlineExceeded"), [], 1, NOW)
    degraded = next(c for c in late.status["conditions"] if c["type"] == "Degraded")
    assert late.status["phase"] == "Failed" and degraded["reason"] == "DeadlineExceeded"
    assert degraded["message"] == "run churn-nightly-batch ran past spec.activeDeadline and was stopped"


def test_an_oom_kill_names_the_field_to_raise():
    pod = {"metadata": {"name": "churn-nightly-batch-x"}, "spec": {"containers": [
        {"name": "scorer", "resources": {"limits": {"memory": "1Gi"}}}]},
           "status": {"containerStatuses": [{"name": "scorer", "state": {"terminated": {"reason": "OOMKilled"}}}]}}
    observed = batchstatus.observe_run({"phase": "Running"}, None, [pod], 1, NOW)
    assert observed.status["phase"] == "Failed"
    assert "raise spec.resources.memory (or lower spec.batchSize)" in observed.events[-1][2]


def test_a_schedule_stays_scheduled_and_announces_each_run_once():
    cron = {"status": {"lastScheduleTime": "2026-12-06T02:00:00Z"}}
    done = report("Succeeded", output="pvc://x/r1", fingerprint="sha256:f", completionTime="2026-12-06T02:00:05Z")
    first = batchstatus.observe_schedule({"phase": "Scheduled", "report": done}, cron, job_with("Complete"), [], 2,
                                         NOW)
    assert first.status["phase"] == "Scheduled" and first.status["lastScheduleTime"] == "2026-12-06T02:00:00Z"
    assert first.status["output"] == "pvc://x/r1" and first.status["rowsScored"] == 1000
    assert [e[1] for e in first.events] == ["Succeeded"] and first.events[0][2].startswith("run 20261206-020000-")
    again = batchstatus.observe_schedule({**first.status, "report": done}, cron, job_with("Complete"), [], 2, NOW)
    assert again.events == []
    # The next night fails: Degraded, phase unchanged, output of the failed run none.
    failed = report("Failed", runId="r2", error="input pvc://x does not exist", completionTime=NOW)
    night = batchstatus.observe_schedule({**again.status, "report": failed}, cron, job_with("Failed", "BackoffLimit"),
                                         [], 2, NOW)
    assert night.status["phase"] == "Scheduled" and night.status["output"] is None
    degraded = next(c for c in night.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and "input pvc://x does not exist" in degraded["message"]
    # And the one after succeeds: recovered.
    ok = report("Succeeded", runId="r3", output="pvc://x/r3", completionTime="2026-12-07T02:00:05Z")
    after = batchstatus.observe_schedule({**night.status, "report": ok}, cron, job_with("Complete"), [], 2, NOW)
    degraded = next(c for c in after.status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("False", "Recovered")


def test_the_example_is_scheduled_and_tracks_the_gated_model():
    example = copy.deepcopy(BATCH_DOC)
    parsed = BatchPredictionSpec.model_validate(example["spec"])
    assert parsed.schedule is not None and parsed.model.track is not None

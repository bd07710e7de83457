"""BatchPrediction against the real control plane: a one-shot one becomes a Job of the scorer with the model it
resolved, a scheduled one a CronJob, a tracked one waits for a gated model, and status tells a run's end in words.

The scorer does not run here (the pods are KWOK's, which complete at once without running anything); where the
operator needs its report, the test writes it through the status subresource as the runtime contract says the
scorer does (`status.report`). tests/integration/runtime/test_batch.py runs the scorer itself."""

from __future__ import annotations

import copy
import json

import pytest
from kubernetes import client

from tests.integration.helpers import EXAMPLES, GROUP, VERSION, Mlcycle, condition, owned_by, read_or_none, wait_for

pytestmark = pytest.mark.integration

MODEL_VERSION = "20261125-171657-dd6a91"


def pinned(name: str = "churn-once", **spec) -> dict:
    """The example, pinned to a version and run once."""
    manifest = copy.deepcopy(EXAMPLES["BatchPrediction"])
    manifest["metadata"]["name"] = name
    manifest["spec"].pop("schedule")
    manifest["spec"]["model"] = {"name": "churn-classifier", "version": MODEL_VERSION}
    manifest["spec"].update(spec)
    return manifest


def test_a_one_shot_run_is_a_job_with_the_pinned_model_and_fails_in_words_without_a_report(ml: Mlcycle):
    ml.create(EXAMPLES["MLProject"])
    bp = ml.create(pinned())
    job = wait_for(lambda: read_or_none(ml.batch.read_namespaced_job, "churn-once-batch", ml.namespace),
                   what="the scoring Job")
    assert owned_by(job, bp)
    pod = job.spec.template.spec
    assert pod.containers[0].command == ["python", "-m", "mlcycle_runtime.batch", "--config",
                                         "/etc/mlcycle/config.json"]
    assert pod.service_account_name == "mlcycle-churn-workload" and pod.automount_service_account_token
    assert pod.containers[0].security_context.read_only_root_filesystem
    config = json.loads(ml.core.read_namespaced_config_map("churn-once-batch-config",
                                                           ml.namespace).data["config.json"])
    assert config["model"] == {"name": "churn-classifier", "version": MODEL_VERSION,
                               "uri": f"pvc://churn-models/artifacts/churn/models/churn-classifier/{MODEL_VERSION}"}
    assert config["input"]["passthrough"] == ["customer_id"] and config["report"] == {"statusField": "report"}
    # KWOK completes the pod without running anything: no report, so the run fails in words, never silently.
    status = wait_for(lambda: (s := ml.status("BatchPrediction", "churn-once")).get("phase") == "Failed" and s,
                      timeout=60, what="BatchPrediction Failed")
    assert status["workload"] == {"kind": "Job", "name": "churn-once-batch"}
    assert status["model"]["version"] == status["modelVersion"] == MODEL_VERSION
    degraded = condition(status, "Degraded")
    assert degraded["reason"] == "ScoringFailed" and "exited without reporting a result" in degraded["message"]
    ml.wait_event("churn-once", lambda e: e.startswith("Failed:"), "a Failed Event")
    with pytest.raises(client.ApiException) as refused:
        ml.objects.patch_namespaced_custom_object(GROUP, VERSION, ml.namespace, "batchpredictions", "churn-once",
                                                  {"spec": {"batchSize": 10}})
    assert refused.value.status == 422 and "immutable" in refused.value.body


def test_the_scorers_report_becomes_status_and_events(ml: Mlcycle):
    ml.create(EXAMPLES["MLProject"])
    ml.create(pinned(activeDeadline="1h"))
    wait_for(lambda: ml.status("BatchPrediction", "churn-once").get("workload"), what="the workload in status")
    run_id = "20261206-020000-abc123"
    output = f"pvc://churn-models/predictions/churn/{run_id}"
    ml.report("BatchPrediction", "churn-once", "report", {
        "phase": "Succeeded", "runId": run_id, "modelVersion": MODEL_VERSION, "rowsScored": 120000,
        "rowsRefused": 3, "rowsPerSecond": 250000.5, "output": output, "fingerprint": "sha256:feed",
        "startTime": "2026-12-06T02:00:00Z", "completionTime": "2026-12-06T02:00:01Z", "durationSeconds": 0.48,
        "model": {"name": "churn-classifier", "version": MODEL_VERSION}})
    status = wait_for(lambda: (s := ml.status("BatchPrediction", "churn-once")).get("phase") == "Succeeded" and s,
                      what="BatchPrediction Succeeded")
    assert (status["rowsScored"], status["rowsRefused"], status["rowsPerSecond"]) == (120000, 3, 250000.5)
    assert status["output"] == output and status["fingerprint"] == "sha256:feed" and status["runId"] == run_id
    assert condition(status, "Progressing")["reason"] == "Finished"
    events = ml.wait_event("churn-once", lambda e: e.startswith("Succeeded:"), "a Succeeded Event")
    assert any("scored 120,000 rows (3 refused) with churn-classifier" in e for e in events), events


def test_a_schedule_is_a_cron_job_that_runs_the_newest_gated_model(ml: Mlcycle):
    ml.create(EXAMPLES["MLProject"])
    bp = ml.create(EXAMPLES["BatchPrediction"])
    # Tracked, and no TrainingJob has passed its gates: it waits, saying so.
    status = wait_for(lambda: (c := condition(ml.status("BatchPrediction", "churn-nightly"), "Progressing"))
                      and c["reason"] == "NoModelYet" and ml.status("BatchPrediction", "churn-nightly"),
                      what="NoModelYet")
    assert status["phase"] == "Pending"
    ml.create(EXAMPLES["TrainingJob"])
    ml.report("TrainingJob", "churn-v1", "result", {
        "phase": "Succeeded", "validation": {"passed": True, "violations": []},
        "model": {"name": "churn-classifier", "version": "v1",
                  "uri": "pvc://churn-models/artifacts/churn/models/churn-classifier/v1"},
        "metrics": {"roc_auc": 0.83}, "gates": [{"name": "minMetric", "threshold": 0.75, "value": 0.83,
                                                 "passed": True}]})
    status = wait_for(lambda: (s := ml.status("BatchPrediction", "churn-nightly")).get("phase") == "Scheduled"
                      and s, timeout=90, what="BatchPrediction Scheduled")
    assert status["model"] == {"name": "churn-classifier", "version": "v1", "trainingJob": "churn-v1",
                               "uri": "pvc://churn-models/artifacts/churn/models/churn-classifier/v1"}
    assert condition(status, "Ready")["status"] == "True" and status["workload"]["kind"] == "CronJob"
    cron = ml.batch.read_namespaced_cron_job("churn-nightly-batch", ml.namespace)
    assert owned_by(cron, bp) and cron.spec.schedule == "0 2 * * *"
    assert cron.spec.concurrency_policy == "Forbid"
    assert (cron.spec.successful_jobs_history_limit, cron.spec.failed_jobs_history_limit) == (3, 3)
    assert cron.spec.job_template.spec.template.spec.containers[0].command[2] == "mlcycle_runtime.batch"
    # A schedule may change; the CronJob follows.
    ml.objects.patch_namespaced_custom_object(GROUP, VERSION, ml.namespace, "batchpredictions", "churn-nightly",
                                              {"spec": {"schedule": {"cron": "30 3 * * *", "suspend": True}}})
    wait_for(lambda: (c := ml.batch.read_namespaced_cron_job("churn-nightly-batch", ml.namespace)).spec.schedule
             == "30 3 * * *" and c.spec.suspend, what="the CronJob to follow the new schedule")
    # A run the scorer reports failed leaves the schedule in place, Degraded in its words.
    ml.report("BatchPrediction", "churn-nightly", "report", {
        "phase": "Failed", "runId": "r1", "error": "input pvc://churn-models/data/customers.parquet does not exist",
        "completionTime": "2026-12-06T03:30:02Z"})
    status = wait_for(lambda: (c := condition(s := ml.status("BatchPrediction", "churn-nightly"), "Degraded"))
                      and c["status"] == "True" and s, what="Degraded after a failed run")
    assert status["phase"] == "Scheduled" and "does not exist" in condition(status, "Degraded")["message"]

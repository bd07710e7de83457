"""From pods, the workload and the trainer's report to a TrainingJob status in words (no cluster)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest

from mlcycle_operator import conditions as cond
from mlcycle_operator import diagnose
from mlcycle_operator.diagnose import REPORT_GRACE_SECONDS, Problem, job_failure, observe_training, pod_problems

IMAGE = "ghcr.io/mlcycle/runtime:0.1.0"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
NOW = "2025-03-01T12:00:00Z"


def stamp(seconds: float = 0) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


# --- what the cluster shows ------------------------------------------------------------------------------------


def pod(name: str = "churn-v1-train-abcde", conditions: list | None = None, containers: list | None = None,
        init_containers: list | None = None) -> dict:
    status: dict = {"phase": "Pending", "conditions": conditions or []}
    if containers is not None:
        status["containerStatuses"] = containers
    if init_containers is not None:
        status["initContainerStatuses"] = init_containers
    return {"metadata": {"name": name}, "status": status}


def waiting(reason: str, message: str | None = None, image: str = IMAGE, name: str = "trainer") -> dict:
    state = {"reason": reason, **({"message": message} if message else {})}
    return {"name": name, "image": image, "ready": False, "state": {"waiting": state}}


def oom(where: str = "state", name: str = "trainer") -> dict:
    terminated = {"terminated": {"reason": "OOMKilled", "exitCode": 137}}
    status: dict = {"name": name, "image": IMAGE, "state": {"running": {}}, "lastState": {}}
    status[where] = terminated
    return status


def unschedulable(message: str = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.") -> dict:
    return {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}


def job(*conditions: dict) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "churn-v1-train"},
            "status": {"conditions": list(conditions)}}


def failed(reason: str, message: str = "") -> dict:
    return {"type": "Failed", "status": "True", "reason": reason, "message": message, "lastTransitionTime": stamp()}


def complete(at: str = NOW) -> dict:
    return {"type": "Complete", "status": "True", "lastTransitionTime": at}


def running_status(result: dict | None = None, phase: str = "Training", conditions: list | None = None) -> dict:
    status: dict = {"phase": phase, "workload": {"kind": "Job", "name": "churn-v1-train"},
                    "conditions": conditions or []}
    if result is not None:
        status["result"] = result
    return status


def succeeded_result(gates: list | None = None, metrics: dict | None = None) -> dict:
    return {
        "phase": "Succeeded",
        "model": {"name": "churn-classifier", "version": "20250301-1200-3f2a", "uri": "pvc://churn-models/x"},
        "metrics": metrics if metrics is not None else {"roc_auc": 0.81234, "log_loss": 0.4},
        "trials": {"total": 8, "finished": 8},
        "gates": gates if gates is not None else [
            {"name": "minMetric", "threshold": 0.75, "value": 0.81234, "passed": True},
            {"name": "minLiftOverBaseline", "threshold": 0.0, "value": 0.31, "passed": True},
        ],
    }


def condition(status: dict, type_: str) -> dict | None:
    return cond.get_condition(status.get("conditions"), type_)


def observe(old: dict, workload: dict | None = None, pods: list | None = None, now: str = NOW, generation: int = 2):
    return observe_training(old, workload, pods or [], generation, now)


# --- pod_problems -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"])
def test_image_pull_problems_name_the_image(reason):
    [problem] = pod_problems([pod(containers=[waiting(reason, image="registry.local/runtime:typo")])])
    assert problem.reason == cond.Reason.IMAGE_PULL_FAILED
    assert "registry.local/runtime:typo" in problem.message
    assert "churn-v1-train-abcde" in problem.message
    assert not problem.fatal  # a registry hiccup or a pushed tag can still fix it


def test_image_pull_message_carries_the_kubelet_message_when_there_is_one():
    message = 'Back-off pulling image "registry.local/runtime:typo"'
    [problem] = pod_problems([pod(containers=[waiting("ImagePullBackOff", message)])])
    assert message in problem.message


def test_image_pull_problems_of_init_containers_are_found():
    [problem] = pod_problems([pod(init_containers=[waiting("ErrImagePull", image="busybox:nope", name="init")])])
    assert problem.reason == cond.Reason.IMAGE_PULL_FAILED
    assert "busybox:nope" in problem.message


@pytest.mark.parametrize("reason", ["ContainerCreating", "PodInitializing", "CrashLoopBackOff"])
def test_other_waiting_reasons_are_not_image_pull_problems(reason):
    assert pod_problems([pod(containers=[waiting(reason)])]) == []


def test_unschedulable_includes_the_schedulers_message():
    scheduler = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    [problem] = pod_problems([pod(conditions=[unschedulable(scheduler)])])
    assert problem.reason == cond.Reason.UNSCHEDULABLE
    assert scheduler in problem.message
    assert "churn-v1-train-abcde" in problem.message
    assert not problem.fatal  # the cluster autoscaler may still add a node


@pytest.mark.parametrize("scheduled", [
    {"type": "PodScheduled", "status": "True"},
    {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"},
    {"type": "Ready", "status": "False", "reason": "Unschedulable"},
])
def test_other_scheduling_conditions_are_not_problems(scheduled):
    assert pod_problems([pod(conditions=[scheduled])]) == []


@pytest.mark.parametrize("where", ["state", "lastState"])
def test_oom_killed_is_fatal_in_state_or_last_state(where):
    [problem] = pod_problems([pod(containers=[oom(where)])])
    assert problem.reason == cond.Reason.OOM_KILLED
    assert problem.fatal
    assert "trainer" in problem.message
    assert "memoryPerWorker" in problem.message  # says what to change


def test_oom_in_both_state_and_last_state_is_reported_once():
    status = oom("state")
    status["lastState"] = {"terminated": {"reason": "OOMKilled"}}
    assert len(pod_problems([pod(containers=[status])])) == 1


def test_other_terminations_are_not_oom():
    status = {"name": "trainer", "state": {"terminated": {"reason": "Error", "exitCode": 1}}}
    assert pod_problems([pod(containers=[status])]) == []


def test_problems_of_several_pods_are_all_listed():
    problems = pod_problems([
        pod("head", containers=[waiting("ErrImagePull")]),
        pod("worker", conditions=[unschedulable()], containers=[oom("lastState")]),
    ])
    assert [p.reason for p in problems] == [cond.Reason.IMAGE_PULL_FAILED, cond.Reason.UNSCHEDULABLE,
                                            cond.Reason.OOM_KILLED]


def test_healthy_and_bare_pods_have_no_problems():
    running = {"name": "trainer", "image": IMAGE, "ready": True, "state": {"running": {"startedAt": NOW}}}
    assert pod_problems([pod(conditions=[{"type": "PodScheduled", "status": "True"}], containers=[running]),
                         {"metadata": {"name": "new"}}]) == []


# --- job_failure ------------------------------------------------------------------------------------------------


def test_deadline_exceeded():
    problem = job_failure(job(failed("DeadlineExceeded", "Job was active longer than specified deadline")))
    assert problem == Problem(cond.Reason.DEADLINE_EXCEEDED, problem.message, True)
    assert "activeDeadline" in problem.message


def test_backoff_limit_exceeded():
    problem = job_failure(job(failed("BackoffLimitExceeded", "Job has reached the specified backoff limit")))
    assert problem.reason == cond.Reason.TRAINING_FAILED
    assert problem.fatal
    assert "BackoffLimitExceeded" in problem.message
    assert "Job has reached the specified backoff limit" in problem.message


@pytest.mark.parametrize("workload", [
    None,
    {},
    job(),
    job(complete()),
    job({"type": "Failed", "status": "False", "reason": "DeadlineExceeded"}),
    job({"type": "Suspended", "status": "True", "reason": "JobSuspended"}),
])
def test_no_failure(workload):
    assert job_failure(workload) is None


# --- observe_training: phases -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("reported", "phase"), [
    ("ValidatingData", "ValidatingData"),
    ("Training", "Training"),
    ("Evaluating", "Evaluating"),
    ("Succeeded", "Succeeded"),
    ("Failed", "Failed"),
    ("Exploding", "Pending"),  # not a phase the runtime may report: ignored
    (None, "Pending"),
])
def test_reported_phase_becomes_the_status_phase(reported, phase):
    result = {"phase": reported} if reported else {}
    observed = observe({"phase": "Pending", "result": result})
    assert observed.status["phase"] == phase
    assert observed.status["observedGeneration"] == 2
    progressing = condition(observed.status, cond.PROGRESSING)
    assert progressing["status"] == ("False" if phase in diagnose.TERMINAL else "True")


def test_without_an_old_phase_it_is_pending():
    assert observe({}).status["phase"] == "Pending"


def test_reported_results_are_copied_into_status():
    result = {**succeeded_result(), "baselines": {"zeroRule": {"roc_auc": 0.5}},
              "slices": [{"column": "plan", "value": "basic", "rows": 10, "metrics": {"roc_auc": 0.7}}],
              "lineage": {"dataFingerprint": "sha256:abc"}}
    status = observe(running_status(result)).status
    for key in ("trials", "model", "metrics", "baselines", "gates", "slices", "lineage"):
        assert status[key] == result[key]


def test_training_progress_names_the_trials():
    result = {"phase": "Training", "trials": {"total": 8, "finished": 3}}
    progressing = condition(observe(running_status(result)).status, cond.PROGRESSING)
    assert progressing["reason"] == "Training"
    assert progressing["message"] == "phase Training: 3/8 trials"


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_a_terminal_phase_changes_nothing(phase):
    old = running_status({"phase": "Training"}, phase=phase)
    observed = observe(old, workload=job(failed("DeadlineExceeded")), pods=[pod(containers=[oom()])])
    assert observed.status == {}
    assert observed.events == []


# --- observe_training: data validation --------------------------------------------------------------------------


def test_a_validation_failure_fails_the_job_and_lists_every_violation():
    violations = [
        "tenure_months: 12 values below min 0",
        {"column": "plan", "message": "plan: 3 values not in [basic, standard, premium]"},
        "monthly_charges: 4% missing, at most 1% allowed",
    ]
    result = {"phase": "ValidatingData", "validation": {"passed": False, "violations": violations}}
    observed = observe(running_status(result, phase="ValidatingData"))
    assert observed.status["phase"] == "Failed"
    data_valid = condition(observed.status, cond.DATA_VALID)
    assert data_valid["status"] == "False"
    assert data_valid["reason"] == cond.Reason.BAD_DATA
    for text in ("tenure_months: 12 values below min 0", "plan: 3 values not in [basic, standard, premium]",
                 "monthly_charges: 4% missing, at most 1% allowed"):
        assert text in data_valid["message"]
    assert observed.status["completionTime"] == NOW
    assert any(e[0] == "Warning" for e in observed.events)


def test_passed_validation_sets_data_valid_and_keeps_going():
    result = {"phase": "Training", "validation": {"passed": True, "violations": []}}
    observed = observe(running_status(result))
    assert observed.status["phase"] == "Training"
    data_valid = condition(observed.status, cond.DATA_VALID)
    assert (data_valid["status"], data_valid["reason"]) == ("True", "Validated")


def test_without_a_validation_report_there_is_no_data_valid_condition():
    assert condition(observe(running_status({"phase": "Training"})).status, cond.DATA_VALID) is None


# --- observe_training: gates and success ------------------------------------------------------------------------


def test_all_gates_passed():
    observed = observe(running_status(succeeded_result()))
    assert observed.status["phase"] == "Succeeded"
    assert observed.status["gatesPassed"] is True
    gates = condition(observed.status, cond.GATES_PASSED)
    assert (gates["status"], gates["reason"]) == ("True", "GatesPassed")


def test_a_failed_gate_is_named_in_the_condition():
    result = succeeded_result(gates=[
        {"name": "minMetric", "threshold": 0.75, "value": 0.71, "passed": False},
        {"name": "minLiftOverBaseline", "threshold": 0.0, "value": 0.2, "passed": True},
        {"name": "minLiftOverChampion", "threshold": 0.0, "value": -0.01, "passed": False},
    ])
    observed = observe(running_status(result))
    assert observed.status["phase"] == "Succeeded"  # a missed gate is not a failed run
    assert observed.status["gatesPassed"] is False
    gates = condition(observed.status, cond.GATES_PASSED)
    assert (gates["status"], gates["reason"]) == ("False", "GatesFailed")
    assert "minMetric 0.71 vs 0.75" in gates["message"]
    assert "minLiftOverChampion -0.01 vs 0.0" in gates["message"]
    assert "minLiftOverBaseline" not in gates["message"]
    assert any(e[0] == "Normal" and "gates not passed" in e[2] for e in observed.events)


def test_gates_are_not_judged_before_the_run_succeeds():
    result = {**succeeded_result(), "phase": "Evaluating"}
    status = observe(running_status(result)).status
    assert "gatesPassed" not in status
    assert condition(status, cond.GATES_PASSED) is None


def test_gates_reported_earlier_are_judged_on_success():
    old = running_status({"phase": "Succeeded", "model": {"name": "m", "version": "7"}}, phase="Evaluating")
    old["gates"] = [{"name": "minMetric", "threshold": 0.75, "value": 0.8, "passed": True}]
    assert observe(old).status["gatesPassed"] is True


def test_no_gates_configured_passes_vacuously():
    status = observe(running_status(succeeded_result(gates=[]))).status
    assert status["gatesPassed"] is True


def test_success_sets_completion_time_and_a_normal_event_with_version_and_metrics():
    observed = observe(running_status(succeeded_result()), now="2025-03-01T12:34:56Z")
    assert observed.status["completionTime"] == "2025-03-01T12:34:56Z"
    [(type_, _, message)] = [e for e in observed.events if e[1] == cond.Reason.SUCCEEDED]
    assert type_ == "Normal"
    assert "churn-classifier" in message
    assert "20250301-1200-3f2a" in message
    assert "roc_auc=0.8123" in message
    assert "log_loss=0.4" in message
    assert "gates passed" in message
    assert not [e for e in observed.events if e[0] == "Warning"]


def test_a_reported_failure_carries_the_trainers_error():
    result = {"phase": "Failed", "error": "ValueError: label column churned not found"}
    observed = observe(running_status(result))
    assert observed.status["phase"] == "Failed"
    assert observed.status["completionTime"] == NOW
    degraded = condition(observed.status, cond.DEGRADED)
    assert (degraded["status"], degraded["reason"]) == ("True", cond.Reason.TRAINING_FAILED)
    assert "label column churned not found" in degraded["message"]
    assert ("Warning", "Failed", "ValueError: label column churned not found") in observed.events


# --- observe_training: the workload ----------------------------------------------------------------------------


@pytest.mark.parametrize(("pods", "workload", "reason"), [
    ([pod(containers=[oom("lastState")])], None, cond.Reason.OOM_KILLED),
    ([], job(failed("DeadlineExceeded")), cond.Reason.DEADLINE_EXCEEDED),
    ([], job(failed("BackoffLimitExceeded", "Job has reached the specified backoff limit")),
     cond.Reason.TRAINING_FAILED),
])
def test_a_fatal_problem_fails_the_job(pods, workload, reason):
    observed = observe(running_status({"phase": "Training"}), workload=workload, pods=pods)
    assert observed.status["phase"] == "Failed"
    assert condition(observed.status, cond.DEGRADED)["reason"] == reason
    assert observed.status["completionTime"] == NOW


@pytest.mark.parametrize("problem_pod", [
    pod(conditions=[unschedulable()]),
    pod(containers=[waiting("ImagePullBackOff")]),
])
def test_a_recoverable_problem_degrades_but_keeps_running(problem_pod):
    observed = observe(running_status(phase="Pending"), pods=[problem_pod])
    assert observed.status["phase"] == "Pending"
    assert condition(observed.status, cond.DEGRADED)["status"] == "True"
    assert "completionTime" not in observed.status


def test_the_fatal_problem_is_the_degraded_reason():
    pods = [pod(conditions=[unschedulable()]), pod("other", containers=[oom()])]
    degraded = condition(observe(running_status(), pods=pods).status, cond.DEGRADED)
    assert degraded["reason"] == cond.Reason.OOM_KILLED
    assert "cannot be scheduled" in degraded["message"]  # every problem is in the message


def test_an_event_only_when_the_degraded_reason_changes():
    first = observe(running_status(phase="Pending"), pods=[pod(conditions=[unschedulable()])])
    assert [e[:2] for e in first.events] == [("Warning", cond.Reason.UNSCHEDULABLE)]

    again = observe({**running_status(phase="Pending"), **first.status}, pods=[pod(conditions=[unschedulable()])])
    assert again.events == []
    assert condition(again.status, cond.DEGRADED)["reason"] == cond.Reason.UNSCHEDULABLE

    changed = observe({**running_status(phase="Pending"), **again.status},
                      pods=[pod(containers=[waiting("ImagePullBackOff")])])
    assert [e[:2] for e in changed.events] == [("Warning", cond.Reason.IMAGE_PULL_FAILED)]


def test_degraded_recovers_when_the_problem_goes_away():
    first = observe(running_status(phase="Pending"), pods=[pod(conditions=[unschedulable()])])
    recovered = observe({**running_status(phase="Pending"), **first.status}, pods=[pod()])
    degraded = condition(recovered.status, cond.DEGRADED)
    assert (degraded["status"], degraded["reason"]) == ("False", "Recovered")
    assert recovered.events == []


def test_observe_does_not_mutate_the_old_status():
    old = running_status({"phase": "Training"}, conditions=[
        {"type": cond.DEGRADED, "status": "True", "reason": cond.Reason.UNSCHEDULABLE, "message": "",
         "lastTransitionTime": stamp(-60), "observedGeneration": 1}])
    snapshot = copy.deepcopy(old)
    observe(old, workload=job(failed("DeadlineExceeded")))
    assert old == snapshot


# --- observe_training: a workload that completed without a report ---------------------------------------------


@pytest.mark.parametrize(("after", "phase"), [
    (0, "Training"),
    (REPORT_GRACE_SECONDS - 1, "Training"),
    (REPORT_GRACE_SECONDS + 1, "Failed"),
    (3600, "Failed"),
])
def test_a_completed_job_without_a_report_fails_only_after_the_grace(after, phase):
    observed = observe(running_status({"phase": "Training"}), workload=job(complete(stamp())), now=stamp(after))
    assert observed.status["phase"] == phase
    if phase == "Failed":
        degraded = condition(observed.status, cond.DEGRADED)
        assert degraded["reason"] == cond.Reason.TRAINING_FAILED
        assert "without reporting" in degraded["message"]
    else:
        assert condition(observed.status, cond.DEGRADED) is None
        assert observed.events == []


def test_a_completed_job_that_reported_success_succeeds():
    observed = observe(running_status(succeeded_result()), workload=job(complete(stamp())), now=stamp(3600))
    assert observed.status["phase"] == "Succeeded"
    assert condition(observed.status, cond.DEGRADED) is None


def test_job_completed_at():
    assert diagnose.job_completed_at(job(complete("2025-03-01T12:00:00Z"))) == "2025-03-01T12:00:00Z"
    assert diagnose.job_completed_at(job({"type": "Complete", "status": "False"})) is None
    assert diagnose.job_completed_at(None) is None


def test_a_failed_ray_job_fails_the_training_job():
    ray_job = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "churn-v1-train"},
               "status": {"jobStatus": "RUNNING", "jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded",
                          "message": "The RayJob has passed the activeDeadlineSeconds."}}
    observed = observe(running_status({"phase": "Training"}), workload=ray_job, now=stamp(3600))
    assert observed.status["phase"] == "Failed"


# --- autoscalers (ModelDeployment status) ----------------------------------------------------------------------


def hpa(*conditions: dict) -> dict:
    return {"metadata": {"name": "churn-v1"}, "status": {"conditions": [{"lastTransitionTime": stamp(-300), **c}
                                                                        for c in conditions]}}


def test_an_autoscaler_without_a_metrics_api_says_so_in_its_controllers_words():
    missing = ("the HPA was unable to compute the replica count: failed to get cpu utilization: unable to get "
               "metrics for resource cpu: unable to fetch metrics from resource metrics API: the server could not "
               "find the requested resource (get pods.metrics.k8s.io)")
    inactive = hpa({"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale"},
                   {"type": "ScalingActive", "status": "False", "reason": "FailedGetResourceMetric",
                    "message": missing})
    problems = diagnose.autoscaler_problems([inactive], NOW)
    assert problems == [Problem(cond.Reason.AUTOSCALING_INACTIVE,
                                f"autoscaler churn-v1 cannot scale (FailedGetResourceMetric): {missing}", False)]
    assert cond.Reason.AUTOSCALING_INACTIVE in diagnose.POD_REASONS  # goes when the autoscaler recovers


def test_an_autoscaler_that_scales_or_is_disabled_or_new_is_no_problem():
    assert diagnose.autoscaler_problems([
        hpa({"type": "AbleToScale", "status": "True"}, {"type": "ScalingActive", "status": "True"}),
        hpa({"type": "ScalingActive", "status": "False", "reason": "ScalingDisabled"}),
        {"metadata": {"name": "churn-v2"}},
    ], NOW) == []


def test_a_new_autoscaler_without_metrics_yet_is_given_time():
    """metrics-server has not scraped a new version's pods yet: no metrics for a minute or so."""
    young = hpa({"type": "ScalingActive", "status": "False", "reason": "FailedGetResourceMetric",
                 "message": "no metrics returned from resource metrics API", "lastTransitionTime": stamp(-60)})
    assert diagnose.autoscaler_problems([young], NOW) == []
    assert len(diagnose.autoscaler_problems([young], stamp(diagnose.AUTOSCALER_GRACE_SECONDS))) == 1

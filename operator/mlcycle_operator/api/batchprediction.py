"""BatchPrediction: one model version scores a Parquet input into a new immutable output, once or on a schedule."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from .common import (
    STORAGE_URI_PATTERN,
    ApiModel,
    FreeForm,
    Name,
    PositiveDuration,
    Resources,
    StatusBase,
    Text,
    pvc_claim_rule,
    validations,
)
from .mlproject import CRON_PATTERN
from .modeldeployment import ModelRef

# Columns the scorer adds to every output row; an input or passthrough column of the same name would be lost.
OUTPUT_COLUMNS = ("prediction", "model_version", "run_id")


class BatchInput(ApiModel):
    """The rows to score: Parquet with the model's feature columns (and any others, passed through)."""

    uri: str = Field(pattern=STORAGE_URI_PATTERN, description="Parquet file or directory: file://, s3:// or "
                     "pvc://<claim>/<path>. Read in record batches, never whole.")
    passthrough: list[Text] = Field(
        default_factory=list, max_length=100, description="Columns copied into each output row beside the "
        "prediction (entity keys, ids); every column that is not a model feature when empty.")

    model_config = validations({
        "rule": "self.passthrough.all(c, !(c in ['prediction', 'model_version', 'run_id']))",
        "message": "prediction, model_version and run_id are the columns the scorer adds; pass through others",
        "fieldPath": ".passthrough",
    })


class BatchOutput(ApiModel):
    """Where each run writes: a new directory `<uri>/<runId>/`, complete or absent, never overwritten."""

    uri: str = Field(pattern=STORAGE_URI_PATTERN, description="Base URI of the runs' directories: file://, s3:// "
                     "or pvc://<claim>/<path>.")

    model_config = validations(pvc_claim_rule("uri"))


class Schedule(ApiModel):
    """Score again on a cron schedule: a CronJob instead of a one-shot Job."""

    cron: str = Field(pattern=CRON_PATTERN, description="Cron schedule (five fields, or a macro such as @daily), "
                      "in the controller manager's time zone unless timeZone is set.")
    time_zone: Text | None = Field(None, description="IANA time zone of the schedule, e.g. Europe/Berlin.")
    concurrency_policy: Literal["Forbid", "Replace", "Allow"] = Field(
        "Forbid", description="What to do when a run is due while the last one still runs: Forbid skips it, "
        "Replace stops the running one, Allow runs both.")
    successful_runs_history_limit: int = Field(3, ge=0, le=100, description="Finished runs' Jobs kept.")
    failed_runs_history_limit: int = Field(3, ge=0, le=100, description="Failed runs' Jobs kept.")
    suspend: bool = Field(False, description="Start no new run until this is false again.")


class BatchPredictionSpec(ApiModel):
    """Desired state of a BatchPrediction. A one-shot one is immutable once created; a scheduled one may change
    (each run reads its config when it starts)."""

    model_config = validations({
        "rule": "(has(oldSelf.schedule) && has(self.schedule)) || self == oldSelf",
        "message": "a one-shot BatchPrediction's spec is immutable (create a new one); a scheduled one may change "
                   "but stays scheduled",
    })

    project: Name = Field(description="The MLProject this batch prediction belongs to.")
    model: ModelRef = Field(description="The model that scores: pinned (version or uri) or tracked; a tracked "
                            "model is resolved when a run is prepared and recorded in status.")
    input: BatchInput = Field(description="The rows to score.")
    output: BatchOutput = Field(description="Where each run's predictions go.")
    schedule: Schedule | None = Field(None, description="Run on a schedule; one run at once when omitted.")
    max_invalid_fraction: float = Field(
        0.0, ge=0, le=1, description="Largest share of rows the model may refuse (a missing or mistyped feature) "
        "before the run fails and publishes nothing. Refused rows are written under _invalid/ with the reason.")
    batch_size: int = Field(65536, ge=1, le=1_000_000, description="Rows read, scored and written at a time: what "
                            "bounds the scorer's memory, whatever the input's size.")
    resources: Resources = Field(default_factory=lambda: Resources(cpu="1", memory="2Gi"),
                                 description="CPU and memory of the scoring pod.")
    image: Text | None = Field(None, description="Runtime image; the project's default when omitted.")
    active_deadline: PositiveDuration = Field("6h", description="Longest a run may take before it is stopped.")
    backoff_limit: int = Field(0, ge=0, le=10, description="Retries of a failed run's pod.")


class ResolvedModel(ApiModel):
    """The model version the runs score with."""

    name: str = Field(description="Model name.")
    version: str = Field(description="Model version.")
    uri: str = Field(description="Where the version is stored.")
    training_job: str | None = Field(None, description="The TrainingJob that produced it (tracked models).")


class BatchWorkload(ApiModel):
    """The object that runs the scoring."""

    kind: Literal["Job", "CronJob"] = Field(description="Job (one run) or CronJob (scheduled).")
    name: str = Field(description="Its name, in the batch prediction's namespace.")


class BatchPredictionStatus(StatusBase):
    """Observed state of a BatchPrediction; the run fields describe the last run that reported."""

    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Scheduled"] | None = Field(
        None, description="Pending, Running, Succeeded or Failed (one run); Scheduled (a schedule).")
    model: ResolvedModel | None = Field(None, description="The model version runs score with now.")
    workload: BatchWorkload | None = Field(None, description="The Job or CronJob that runs the scoring.")
    run_id: str | None = Field(None, description="Id of the last run: its output directory's name.")
    model_version: str | None = Field(None, description="The model version the last run scored with.")
    rows_scored: int | None = Field(None, description="Rows the last run scored (so far, while it runs).")
    rows_refused: int | None = Field(None, description="Rows the last run could not score (written under _invalid/).")
    rows_per_second: float | None = Field(None, description="Rows read per second by the last run.")
    output: str | None = Field(None, description="The last run's output directory, once published.")
    fingerprint: str | None = Field(None, description="sha256 of the last run's scored output files.")
    start_time: datetime | None = Field(None, description="When the last run started.")
    completion_time: datetime | None = Field(None, description="When the last run finished.")
    duration_seconds: float | None = Field(None, description="How long the last run took.")
    last_schedule_time: datetime | None = Field(None, description="When the CronJob last started a run.")
    report: FreeForm | None = Field(None, description="Raw report written by the scoring workload.")

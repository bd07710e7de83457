"""One batch run: stream the input in record batches, score each with the model server's encoding and predictor,
write the scored rows (passthrough columns, prediction, model version, run id) and the refused ones (with the
reason) as Parquet parts, and publish the run's directory only when few enough rows were refused.

Memory holds one record batch and its predictions at a time (`batchSize` rows), whatever the input's size.
"""

from __future__ import annotations

import secrets
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mlcycle_runtime import storage
from mlcycle_runtime.batch import columns
from mlcycle_runtime.batch.output import INVALID_DIR, HashingFile, RunOutput
from mlcycle_runtime.config import BatchConfig
from mlcycle_runtime.model import LoadedModel, load_version
from mlcycle_runtime.report import Reporter

PREDICTION, MODEL_VERSION, RUN_ID, REASON = "prediction", "model_version", "run_id", "reason"
OUTPUT_COLUMNS = (PREDICTION, MODEL_VERSION, RUN_ID)
# Scored rows per output part: parts of a few tens of MB, each readable on its own.
ROWS_PER_PART = 1_000_000
PROGRESS_SECONDS = 5.0
REPORT_SECONDS = 15.0


class BatchFailed(Exception):
    """The run cannot go on; the message is the report's one-line error."""


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def _one_line(text: str, limit: int = 2000) -> str:
    return " ".join(str(text).split())[:limit]


class Input:
    """The Parquet file, or the files of a directory (names starting with "_" or "." left out, as every Parquet reader
    does), at a storage URI, read one record batch at a time."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.fs, path = storage.filesystem(uri)
        if not self.fs.exists(path):
            raise BatchFailed(f"input {uri} does not exist")
        if self.fs.isdir(path):
            self.files = sorted(p for p in self.fs.find(path)
                                if not any(part.startswith(("_", ".")) for part in p[len(path):].split("/")))
        else:
            self.files = [path]
        if not self.files:
            raise BatchFailed(f"input {uri} is an empty directory")
        self.names = self._open(self.files[0]).schema_arrow.names

    def _open(self, path: str) -> pq.ParquetFile:
        try:
            # No pre-buffering: it caches the column chunks it has read, so memory would grow with the file.
            return pq.ParquetFile(self.fs.open(path, "rb"), pre_buffer=False)
        except (pa.ArrowInvalid, OSError) as err:
            raise BatchFailed(f"input {self.uri}: {path} is not readable Parquet: {_one_line(str(err), 300)}") from None

    def batches(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        for path in self.files:
            parquet = self._open(path)
            if parquet.schema_arrow.names != self.names:
                raise BatchFailed(f"input {self.uri}: {path} has the columns {', '.join(parquet.schema_arrow.names)}, "
                                  f"where {self.files[0]} has {', '.join(self.names)}")
            yield from parquet.iter_batches(batch_size=batch_size, use_threads=False)


def _constant(value: str, rows: int) -> pa.Array:
    return pa.array([value], pa.string()).take(pa.array(np.zeros(rows, dtype=np.int32)))


def _predictions(values: np.ndarray) -> pa.Array:
    if values.ndim == 2:  # multiclass: one probability per class
        return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1])
    return pa.array(values)


class Parts:
    """A sequence of Parquet parts under one prefix of the run's output, a new part every `rows_per_part` rows."""

    def __init__(self, output: RunOutput, prefix: str, rows_per_part: int = ROWS_PER_PART) -> None:
        self.output, self.prefix, self.rows_per_part = output, prefix, rows_per_part
        self.names: list[str] = []
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._file: HashingFile | None = None
        self._in_part = 0

    def write(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        if self._writer is not None and (self._in_part >= self.rows_per_part
                                         or not self._writer.schema.equals(table.schema)):
            self.close()
        if self._writer is None:
            name = f"{self.prefix}part-{len(self.names):05d}.parquet"
            self._file = self.output.open(name)
            self._writer = pq.ParquetWriter(self._file, table.schema)
            self.names.append(name)
            self._in_part = 0
        self._writer.write_table(table)
        self._in_part += table.num_rows
        self.rows += table.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._file.close()
            self.output.closed(self.names[-1], self._file)
            self._writer = self._file = None


class BatchRun:
    def __init__(self, config: BatchConfig, reporter: Reporter | None = None,
                 loader: Callable[[str], LoadedModel] = load_version, run_id: str | None = None,
                 rows_per_part: int = ROWS_PER_PART) -> None:
        self.config = config
        self.reporter = reporter or Reporter("BatchPrediction", config.name, config.namespace,
                                             config.report.status_field)
        self.loader, self.rows_per_part = loader, rows_per_part
        self.run_id = run_id or new_run_id()
        self.result: dict[str, Any] = {"runId": self.run_id, "startTime": now(),
                                       "model": config.model.model_dump(mode="json", by_alias=True,
                                                                        exclude_none=True)}
        self.scored = self.refused = 0
        self.reasons: Counter[str] = Counter()
        self._started = time.monotonic()

    def send(self, **fields: Any) -> None:
        self.result.update(fields)
        self.reporter.send(dict(self.result))

    def rate(self) -> float:
        return round((self.scored + self.refused) / max(time.monotonic() - self._started, 1e-9), 1)

    def execute(self) -> int:
        """Run; 0 after Succeeded, 1 after Failed (always reported before returning)."""
        output: RunOutput | None = None
        try:
            self.send(phase="Running")
            model = self.load_model()
            dataset = Input(self.config.input.uri)
            passthrough = self.passthrough(model, dataset.names)
            output = RunOutput(self.config.output.uri, self.run_id)
            self.score(model, dataset, passthrough, output)
            output = None  # published: nothing to abandon
            return 0
        except (BatchFailed, storage.StorageError) as err:
            return self.fail(str(err), output)
        except Exception as err:  # reported, with its traceback in the log: never a silent exit
            traceback.print_exc()
            return self.fail(f"{type(err).__name__}: {err}", output)

    def fail(self, error: str, output: RunOutput | None) -> int:
        if output is not None:
            output.abandon()
        self.send(phase="Failed", error=_one_line(error), completionTime=now(), **self.counts())
        print(f"mlcycle: batch prediction failed: {_one_line(error)}", file=sys.stderr, flush=True)
        return 1

    def counts(self) -> dict[str, Any]:
        return {"rowsScored": self.scored, "rowsRefused": self.refused, "rowsPerSecond": self.rate()}

    def load_model(self) -> LoadedModel:
        ref = self.config.model
        if not ref.uri:
            raise BatchFailed("model.uri: the operator resolves the model version to score with; none was given")
        model = self.loader(ref.uri)
        if ref.version and ref.version != model.card.version:
            raise BatchFailed(f"model version {ref.version!r} was asked for, but {ref.uri} holds version "
                              f"{model.card.version!r}")
        self.result["model"] = {**self.result["model"], "name": model.card.name, "version": model.card.version}
        self.result["modelVersion"] = model.card.version
        return model

    def passthrough(self, model: LoadedModel, names: list[str]) -> list[str]:
        """The input's columns copied into the output; the features the model needs must all be there."""
        schema, wanted = model.card.features, self.config.input.passthrough
        missing = columns.missing_columns(schema, names)
        if missing:
            raise BatchFailed(f"input {self.config.input.uri} lacks the feature column(s) {', '.join(missing)} that "
                              f"model {model.card.tag} needs")
        absent = [c for c in wanted if c not in names]
        if absent:
            raise BatchFailed(f"input.passthrough: column(s) {', '.join(absent)} are not in input "
                              f"{self.config.input.uri}")
        chosen = wanted or [c for c in names if c not in set(schema.names)]
        clashing = [c for c in chosen if c in OUTPUT_COLUMNS]
        if clashing:
            raise BatchFailed(f"input column(s) {', '.join(clashing)} would clash with the column(s) the scorer adds; "
                              "list the columns to keep in input.passthrough")
        return chosen

    def score(self, model: LoadedModel, dataset: Input, passthrough: list[str], output: RunOutput) -> None:
        scored = Parts(output, "", self.rows_per_part)
        invalid = Parts(output, f"{INVALID_DIR}/", self.rows_per_part)
        version = model.card.version
        last_print = last_report = time.monotonic()
        try:
            for batch in dataset.batches(self.config.batch_size):
                good, bad = self.score_batch(model, batch, passthrough, version)
                scored.write(good)
                invalid.write(bad)
                moment = time.monotonic()
                if moment - last_print >= PROGRESS_SECONDS:
                    print(f"scored {self.scored:,} rows, refused {self.refused:,} ({self.rate():,.0f} rows/s)",
                          flush=True)
                    last_print = moment
                if moment - last_report >= REPORT_SECONDS:
                    self.send(**self.counts())
                    last_report = moment
        finally:
            scored.close()
            invalid.close()
        self.finish(output, scored, invalid)

    def score_batch(self, model: LoadedModel, batch: pa.RecordBatch, passthrough: list[str],
                    version: str) -> tuple[pa.Table, pa.Table]:
        """The scored rows and the refused rows (with their reason) of one record batch."""
        schema = model.card.features
        reasons = columns.problems(schema, batch)
        ok = np.array([r is None for r in reasons], dtype=bool)
        good = batch.filter(pa.array(ok))
        matrix = columns.encode(schema, good)
        try:
            predictions = model.predictor.predict(matrix)
        except ValueError:
            # Learners such as LogisticRegression refuse NaN (a null, an unseen category): as the server, refuse
            # those rows with what they lack, and score the rest.
            if not np.isnan(matrix).any():
                raise
            lacking = columns.missing_value_reasons(schema, good, matrix)
            scorable = np.array([r is None for r in lacking], dtype=bool)
            positions = np.flatnonzero(ok)
            for position, reason in zip(positions[~scorable].tolist(), [r for r in lacking if r], strict=True):
                reasons[position] = reason
            ok[positions[~scorable]] = False
            good, matrix = good.filter(pa.array(scorable)), matrix[scorable]
            predictions = model.predictor.predict(matrix) if len(matrix) else np.empty(0)
        rows = good.num_rows
        scored = pa.Table.from_batches([good.select(passthrough)]).append_column(
            PREDICTION, _predictions(predictions)).append_column(
            MODEL_VERSION, _constant(version, rows)).append_column(RUN_ID, _constant(self.run_id, rows))
        refused_reasons = [r for r in reasons if r is not None]
        self.reasons.update(refused_reasons)
        refused = pa.Table.from_batches([batch.filter(pa.array(~ok))]).append_column(
            REASON, pa.array(refused_reasons, pa.string())).append_column(
            RUN_ID, _constant(self.run_id, len(refused_reasons)))
        self.scored += rows
        self.refused += len(refused_reasons)
        return scored, refused

    def finish(self, output: RunOutput, scored: Parts, invalid: Parts) -> None:
        total = self.scored + self.refused
        if total == 0:
            raise BatchFailed(f"input {self.config.input.uri} holds no rows")
        limit = self.config.max_invalid_fraction
        if self.refused / total > limit:
            common = "; ".join(f"{reason} ({n} rows)" for reason, n in self.reasons.most_common(5))
            raise BatchFailed(f"{self.refused:,} of {total:,} rows ({self.refused / total:.2%}) cannot be scored, "
                              f"more than maxInvalidFraction {limit:.2%}; nothing was published. Most common: {common}")
        output.publish()
        elapsed = time.monotonic() - self._started
        self.send(phase="Succeeded", output=output.uri, fingerprint=output.fingerprint(scored.names),
                  invalidOutput=storage.join(output.uri, INVALID_DIR) if invalid.names else None,
                  refusedReasons=[{"reason": r, "rows": n} for r, n in self.reasons.most_common(5)],
                  completionTime=now(), durationSeconds=round(elapsed, 3), **self.counts())
        print(f"scored {self.scored:,} rows, refused {self.refused:,} ({self.rate():,.0f} rows/s) with "
              f"{self.result['model'].get('name')} version {self.result.get('modelVersion')}; wrote {output.uri}",
              flush=True)

"""The prediction log: a sample of what the router answered, written as Parquet off the request path.

The router hands each sampled, answered /predict to `PredictionLog.add` after the client has its answer; rows
wait in memory (at most `MAX_BUFFER_ROWS`; past that they are dropped and counted, never queued without bound)
and a background task writes them every `flushSeconds` (or sooner once `FLUSH_ROWS` wait), one Parquet file per
deployment and hour:

    <uri>/deployment=<name>/hour=<YYYY-MM-DDTHH>/part-<time>-<id>.parquet

A file is complete or absent: it is written under a dot-name and renamed into place (readers such as
pyarrow.dataset skip dot-files), or uploaded in one PUT on S3. Storage that is slow or down costs rows, counted
by reason, never an answer. Columns: time (UTC), version, role (stable, candidate, shadow), request_id, row (the
record's index in its request), each configured entity key (as text), features (the record as JSON), prediction
(binary and regression) or probabilities (multiclass).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mlcycle_runtime import storage

log = logging.getLogger("mlcycle.router.predlog")

MAX_BUFFER_ROWS = 100_000
FLUSH_ROWS = 20_000


@dataclass(frozen=True)
class Settings:
    uri: str
    sample_rate: float
    flush_seconds: float = 60.0
    entity_keys: tuple[str, ...] = ()


@dataclass
class _Answer:
    time: float
    version: str
    role: str
    request_id: str
    records: list[Any]
    predictions: list[Any]


def schema(entity_keys: Sequence[str]) -> pa.Schema:
    return pa.schema([
        ("time", pa.timestamp("ms", tz="UTC")), ("version", pa.string()), ("role", pa.string()),
        ("request_id", pa.string()), ("row", pa.int32()),
        *((key, pa.string()) for key in entity_keys),
        ("features", pa.string()), ("prediction", pa.float64()), ("probabilities", pa.list_(pa.float64())),
    ])


def _text(value: Any) -> str | None:
    return None if value is None else value if isinstance(value, str) else json.dumps(value)


def hour_of(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H")


def tables(answers: Sequence[_Answer], entity_keys: Sequence[str]) -> dict[str, pa.Table]:
    """The rows of `answers` as one table per hour (the partition they are written to)."""
    columns: dict[str, dict[str, list[Any]]] = {}
    for answer in answers:
        cols = columns.setdefault(hour_of(answer.time), {name: [] for name in schema(entity_keys).names})
        for i, (record, prediction) in enumerate(zip(answer.records, answer.predictions, strict=False)):
            cols["time"].append(int(answer.time * 1000))
            cols["version"].append(answer.version)
            cols["role"].append(answer.role)
            cols["request_id"].append(answer.request_id)
            cols["row"].append(i)
            for key in entity_keys:
                cols[key].append(_text(record.get(key)) if isinstance(record, dict) else None)
            cols["features"].append(json.dumps(record, separators=(",", ":")))
            is_list = isinstance(prediction, list)
            cols["prediction"].append(None if is_list or prediction is None else float(prediction))
            cols["probabilities"].append([float(p) for p in prediction] if is_list else None)
    return {hour: pa.table(cols, schema=schema(entity_keys)) for hour, cols in columns.items()}


def write_table(table: pa.Table, uri: str, deployment: str, hour: str) -> str:
    """Write one part under its partition, complete or not at all; returns the part's URI."""
    name = f"part-{int(time.time() * 1000)}-{uuid.uuid4().hex[:12]}.parquet"
    target = storage.join(uri, f"deployment={deployment}", f"hour={hour}", name)
    with tempfile.TemporaryDirectory(prefix="mlcycle-predlog-") as tmp:
        local = Path(tmp) / name
        pq.write_table(table, local, compression="zstd")
        storage.put_file(local, target)
    return target


class PredictionLog:
    """Samples answers, buffers their rows (bounded) and writes them in the background."""

    def __init__(self, deployment: str, settings: Settings | None, on_rows: Callable[[str, int], None],
                 rng: Callable[[], float] | None = None, clock: Callable[[], float] = time.time) -> None:
        import random

        self.deployment = deployment
        self.settings = settings
        self._on_rows = on_rows
        self._rng = rng or random.random
        self._clock = clock
        self._pending: list[_Answer] = []
        self._rows = 0
        self._wake = asyncio.Event()
        self._failing = False

    def configure(self, settings: Settings | None) -> None:
        self.settings = settings

    def sampled(self) -> bool:
        """Whether this request is logged (decided once per request, so its shadow answers go with it)."""
        return self.settings is not None and self._rng() < self.settings.sample_rate

    def add(self, version: str, role: str, request_id: str, records: list[Any], predictions: list[Any]) -> None:
        n = min(len(records), len(predictions))
        if self._rows + n > MAX_BUFFER_ROWS:
            self._on_rows("buffer_full", n)
            return
        self._pending.append(_Answer(self._clock(), version, role, request_id, records, predictions))
        self._rows += n
        if self._rows >= FLUSH_ROWS:
            self._wake.set()

    async def run(self) -> None:
        """Flush every flushSeconds (sooner when FLUSH_ROWS wait), until cancelled; then flush what is left."""
        try:
            while True:
                interval = self.settings.flush_seconds if self.settings else 60.0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=interval)
                self._wake.clear()
                await self.flush()
        except asyncio.CancelledError:
            await asyncio.shield(self.flush())
            raise

    async def flush(self) -> None:
        answers, rows, settings = self._pending, self._rows, self.settings
        self._pending, self._rows = [], 0
        if not answers:
            return
        if settings is None:  # logging was turned off with rows waiting: they were sampled under the old config
            self._on_rows("disabled", rows)
            return
        try:
            written = await asyncio.to_thread(self._write, answers, settings)
        except Exception as err:
            self._on_rows("write_failed", rows)
            if not self._failing:  # once per outage, not once per flush
                log.error("prediction log: %d row(s) dropped, cannot write to %s: %s", rows, settings.uri, err)
            self._failing = True
            return
        if self._failing:
            log.info("prediction log: writing to %s again", settings.uri)
        self._failing = False
        self._on_rows("written", written)

    def _write(self, answers: list[_Answer], settings: Settings) -> int:
        written = 0
        for hour, table in tables(answers, settings.entity_keys).items():
            write_table(table, settings.uri, self.deployment, hour)
            written += table.num_rows
        return written


def request_id(given: str | None) -> str:
    """The client's request id when it is a sane one (printable, at most 128 characters), else a new one."""
    if given and len(given) <= 128 and given.isprintable() and not any(c.isspace() for c in given):
        return given
    return uuid.uuid4().hex


"""Adaptive batching inside a server worker: concurrent requests' rows scored as one matrix, answers fanned back.

Each request's validated, encoded matrix joins a queue on the worker's event loop. The queue is scored when it
holds `max_rows` rows, or when its first request has waited `max_latency`. It waits only while waiting pays: when
requests arrive often enough for another to join within `max_latency` and the event loop is congested (its
callbacks run late: the worker's CPU is the bottleneck). Otherwise the queue is scored at the loop's next turn,
with whatever joined by then, so a server below saturation adds no wait at all. A batch is scored
once: when scoring fails, every request in it gets the error (logged once, with its cause; the caller counts
each request's error) and none is scored again. Past `max_queue_rows` waiting rows a request is shed with a
503 rather than queued without bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

# Weight of the newest gap in the moving average of the time between arrivals.
ARRIVAL_SMOOTHING = 0.2
# How many batches' worth of rows may wait before new requests are shed.
QUEUE_BATCHES = 64
# The event loop counts as congested while its callbacks run, on average, later than due by this share of
# max_latency (below saturation a callback waits behind a request or two: well under a millisecond each).
CONGESTED_SHARE = 0.5
LAG_SMOOTHING = 0.2


class Overloaded(Exception):
    """The queue holds more rows than the worker should promise to answer; the request was not queued."""


class BatchFailed(Exception):
    """Scoring a batch raised: every request in it gets this, with the cause attached."""


class Observer(Protocol):
    def batch(self, rows: int, waits: list[float]) -> None: ...

    def shed(self) -> None: ...


@dataclass
class _Waiting:
    matrix: np.ndarray
    future: asyncio.Future
    since: float


class Batcher:
    """Collects matrices from concurrent `submit` calls on one event loop and scores them together.

    `score` takes the stacked matrix and returns one prediction per row (a 1-D array, or 2-D for multiclass);
    `run` decides where it runs (inline on the loop, or a worker thread for big batches)."""

    def __init__(self, score: Callable[[np.ndarray], np.ndarray], max_rows: int, max_latency: float,
                 observer: Observer | None = None, max_queue_rows: int | None = None,
                 run: Callable[[Callable[[], np.ndarray], int], Awaitable[np.ndarray]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_rows < 2:
            raise ValueError("a batch of one is no batching: max_rows must be at least 2")
        self.score, self.max_rows, self.max_latency = score, max_rows, max_latency
        self.max_queue_rows = max_queue_rows or max_rows * QUEUE_BATCHES
        self.observer = observer
        self._run = run or _inline
        self._clock = clock
        self._pending: list[_Waiting] = []
        self._rows = 0
        self._timer: asyncio.TimerHandle | None = None
        self._flushing = False
        self._last_arrival: float | None = None
        self._gap: float | None = None  # moving average of the time between arrivals
        self._lag = 0.0  # moving average of how late the flush callbacks ran
        self._due = 0.0

    @property
    def queued_rows(self) -> int:
        return self._rows

    def expects_company(self) -> bool:
        """Whether another request is likely to arrive within max_latency."""
        return self._gap is not None and self._gap < self.max_latency

    @property
    def congested(self) -> bool:
        """Whether the loop runs callbacks late: requests are waiting for the CPU anyway, so fewer, larger
        batches buy throughput. Below that, waiting would only add latency."""
        return self._lag > CONGESTED_SHARE * self.max_latency

    def worth_waiting(self) -> bool:
        return self.expects_company() and self.congested

    def _arrived(self, now: float) -> None:
        if self._last_arrival is not None:
            gap = now - self._last_arrival
            self._gap = gap if self._gap is None else self._gap + ARRIVAL_SMOOTHING * (gap - self._gap)
        self._last_arrival = now

    async def submit(self, matrix: np.ndarray) -> np.ndarray:
        """The predictions for `matrix`'s rows, scored in a batch with whatever else is waiting."""
        now = self._clock()
        self._arrived(now)
        rows = len(matrix)
        if self._rows + rows > self.max_queue_rows:
            if self.observer is not None:
                self.observer.shed()
            raise Overloaded(f"{self._rows} rows are waiting to be scored (at most {self.max_queue_rows})")
        loop = asyncio.get_running_loop()
        waiting = _Waiting(matrix, loop.create_future(), now)
        self._pending.append(waiting)
        self._rows += rows
        if self._rows >= self.max_rows or not self.worth_waiting():
            # call_soon, not now: requests already read in this turn of the loop still join the batch.
            self._schedule(loop, 0.0)
        elif self._timer is None:
            self._schedule(loop, self.max_latency)
        return await waiting.future

    def _schedule(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        if self._timer is not None:
            if delay > 0:
                return
            self._timer.cancel()
        self._due = loop.time() + delay
        self._timer = (loop.call_later(delay, self._start_flush) if delay > 0 else
                       loop.call_soon(self._start_flush))  # type: ignore[assignment]

    def _start_flush(self) -> None:
        late = max(0.0, asyncio.get_running_loop().time() - self._due)
        self._lag += LAG_SMOOTHING * (late - self._lag)
        self._timer = None
        if self._flushing or not self._pending:
            return  # the running flush takes what is pending when it finishes
        self._flushing = True
        asyncio.get_running_loop().create_task(self._flush())

    def _take(self) -> list[_Waiting]:
        """The next batch: whole requests, oldest first, up to max_rows rows (a bigger request goes alone)."""
        batch, rows = [], 0
        while self._pending and (not batch or rows + len(self._pending[0].matrix) <= self.max_rows):
            waiting = self._pending.pop(0)
            batch.append(waiting)
            rows += len(waiting.matrix)
        self._rows -= rows
        return batch

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._take()
                started = self._clock()
                stacked = batch[0].matrix if len(batch) == 1 else np.concatenate([w.matrix for w in batch])
                try:
                    predictions = await self._run(lambda stacked=stacked: self.score(stacked), len(stacked))
                except Exception as err:
                    logger.error("scoring a batch of %d request(s), %d row(s) failed: %s: %s",
                                 len(batch), len(stacked), type(err).__name__, err)
                    failure = BatchFailed(f"scoring failed: {type(err).__name__}: {err}")
                    failure.__cause__ = err
                    for waiting in batch:
                        if not waiting.future.done():
                            waiting.future.set_exception(failure)
                    continue
                if self.observer is not None:
                    self.observer.batch(len(stacked), [started - w.since for w in batch])
                offset = 0
                for waiting in batch:
                    n = len(waiting.matrix)
                    if not waiting.future.done():  # a cancelled request (client gone) needs no answer
                        waiting.future.set_result(predictions[offset:offset + n])
                    offset += n
                if self._pending and self._rows < self.max_rows and self.worth_waiting():
                    # Load is high enough to wait for: let what arrived during this batch collect, up to
                    # max_latency from its oldest request, rather than scoring a fragment now.
                    wait = self.max_latency - (self._clock() - self._pending[0].since)
                    if wait > 0:
                        if self._timer is not None:
                            self._timer.cancel()
                        loop = asyncio.get_running_loop()
                        self._due = loop.time() + wait
                        self._timer = loop.call_later(wait, self._start_flush)  # type: ignore[assignment]
                        return
        finally:
            self._flushing = False


async def _inline(score: Callable[[], np.ndarray], rows: int) -> np.ndarray:
    return score()

"""The adaptive batcher on a real event loop, with a scorer that records each call (no server, no I/O)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from mlcycle_runtime.serve.batcher import Batcher, BatchFailed, Overloaded

LONG = 60.0  # a max_latency no test waits for: a batch that is scored proves it did not wait


class Recorder:
    """Scores a row as its first column times ten, and remembers the matrix of each call; also the observer."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[np.ndarray] = []
        self.batches: list[tuple[int, list[float]]] = []
        self.sheds = 0
        self.fail = fail

    def __call__(self, matrix: np.ndarray) -> np.ndarray:
        self.calls.append(matrix)
        if self.fail is not None:
            raise self.fail
        return matrix[:, 0] * 10

    def batch(self, rows: int, waits: list[float]) -> None:
        self.batches.append((rows, waits))

    def shed(self) -> None:
        self.sheds += 1


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rows(*values: float) -> np.ndarray:
    return np.asarray([[v, 0.0] for v in values], dtype=np.float32)


def busy(batcher: Batcher, clock: Clock, gap: float = 0.001) -> None:
    """Arrivals `gap` apart so far, on a loop that ran its callbacks far too late: the batcher expects another
    request within max_latency, and waiting for it pays."""
    for _ in range(20):
        clock.now += gap
        batcher._arrived(clock.now)
    batcher._lag = 1000.0


def under_load(max_rows: int, max_latency: float, fail: Exception | None = None,
               **options) -> tuple[Batcher, Recorder, Clock]:
    """A batcher that has seen requests arrive 1 ms apart, so it expects company, with its scorer and clock."""
    score, clock = Recorder(fail), Clock()
    batcher = Batcher(score, max_rows=max_rows, max_latency=max_latency, observer=score, clock=clock, **options)
    busy(batcher, clock)
    return batcher, score, clock


def test_requests_that_arrive_together_are_scored_as_one_matrix_and_each_gets_its_own_rows():
    async def main():
        batcher, score, _clock = under_load(max_rows=8, max_latency=0.01)
        answers = await asyncio.gather(batcher.submit(rows(1)), batcher.submit(rows(2, 3)), batcher.submit(rows(4)))
        return score, answers

    score, answers = asyncio.run(main())
    assert len(score.calls) == 1 and score.calls[0].shape == (4, 2)
    assert [a.tolist() for a in answers] == [[10.0], [20.0, 30.0], [40.0]]
    assert [rows_ for rows_, _ in score.batches] == [4]


def test_a_quiet_server_scores_at_once_without_waiting_for_company():
    async def main():
        score = Recorder()
        batcher = Batcher(score, max_rows=32, max_latency=LONG, observer=score)
        first = await asyncio.wait_for(batcher.submit(rows(1)), 5)
        return first, score

    first, score = asyncio.run(main())
    assert first.tolist() == [10.0] and len(score.calls) == 1


def test_under_load_a_full_batch_is_scored_at_once_and_a_partial_one_waits_for_max_latency():
    async def main():
        batcher, score, _clock = under_load(max_rows=3, max_latency=LONG)
        partial = [asyncio.create_task(batcher.submit(rows(v))) for v in (1, 2)]
        await asyncio.sleep(0.05)
        waited = [t.done() for t in partial]
        full = asyncio.create_task(batcher.submit(rows(3)))
        answers = await asyncio.wait_for(asyncio.gather(*partial, full), 5)
        return waited, answers, score

    waited, answers, score = asyncio.run(main())
    assert waited == [False, False]
    assert [a.tolist() for a in answers] == [[10.0], [20.0], [30.0]] and len(score.calls) == 1


def test_a_partial_batch_under_load_is_scored_once_max_latency_has_passed():
    async def main():
        batcher, score, _clock = under_load(max_rows=100, max_latency=0.02)
        return await asyncio.wait_for(asyncio.gather(batcher.submit(rows(1)), batcher.submit(rows(2))), 5), score

    answers, score = asyncio.run(main())
    assert [a.tolist() for a in answers] == [[10.0], [20.0]] and len(score.calls) == 1


def test_a_batch_takes_whole_requests_up_to_max_rows_and_the_rest_follow():
    async def main():
        batcher, score, _clock = under_load(max_rows=4, max_latency=0.02)
        return await asyncio.wait_for(asyncio.gather(
            batcher.submit(rows(1, 2, 3)), batcher.submit(rows(4, 5)), batcher.submit(rows(6, 7, 8))), 5), score

    answers, score = asyncio.run(main())
    assert [a.tolist() for a in answers] == [[10.0, 20.0, 30.0], [40.0, 50.0], [60.0, 70.0, 80.0]]
    assert [len(c) for c in score.calls] == [3, 2, 3]  # never a request split, every row scored once


def test_a_failing_batch_fails_each_request_with_the_cause_and_scores_nothing_twice():
    async def main():
        batcher, score, _clock = under_load(max_rows=8, max_latency=0.01, fail=RuntimeError("learner exploded"))
        return await asyncio.gather(batcher.submit(rows(1)), batcher.submit(rows(2)), return_exceptions=True), score

    results, score = asyncio.run(main())
    assert len(score.calls) == 1 and score.batches == []
    assert all(isinstance(r, BatchFailed) for r in results)
    assert "RuntimeError: learner exploded" in str(results[0]) and isinstance(results[0].__cause__, RuntimeError)


def test_a_full_queue_sheds_the_request_and_counts_it():
    async def main():
        batcher, score, _clock = under_load(max_rows=4, max_latency=LONG, max_queue_rows=3)
        waiting = asyncio.create_task(batcher.submit(rows(1, 2, 3)))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="3 rows are waiting"):
            await batcher.submit(rows(4))
        waiting.cancel()
        return score

    assert asyncio.run(main()).sheds == 1


def test_a_cancelled_request_does_not_spoil_the_batch_it_was_in():
    async def main():
        batcher, _score, _clock = under_load(max_rows=3, max_latency=LONG)
        gone = asyncio.create_task(batcher.submit(rows(1)))
        await asyncio.sleep(0)
        gone.cancel()
        return await asyncio.wait_for(asyncio.gather(batcher.submit(rows(2)), batcher.submit(rows(3))), 5)

    assert [a.tolist() for a in asyncio.run(main())] == [[20.0], [30.0]]


def test_queue_waits_are_reported_per_request():
    async def main():
        batcher, score, clock = under_load(max_rows=2, max_latency=LONG)
        first = asyncio.create_task(batcher.submit(rows(1)))
        await asyncio.sleep(0)
        clock.now += 0.004
        await batcher.submit(rows(2))
        await first
        return score

    (size, waits), = asyncio.run(main()).batches
    assert size == 2 and waits == pytest.approx([0.004, 0.0])


def test_frequent_requests_on_a_loop_with_cpu_to_spare_are_scored_at_once():
    async def main():
        batcher, score, _ = under_load(max_rows=32, max_latency=LONG)
        batcher._lag = 0.0  # callbacks on time: the worker is not the bottleneck
        return await asyncio.wait_for(batcher.submit(rows(1)), 5), score

    answer, score = asyncio.run(main())
    assert answer.tolist() == [10.0] and len(score.calls) == 1


def test_a_late_loop_is_seen_as_congested_and_an_idle_one_is_not():
    async def main():
        batcher = Batcher(Recorder(), max_rows=32, max_latency=0.004)
        for _ in range(20):
            await batcher.submit(rows(1))
        idle = batcher.congested
        loop = asyncio.get_running_loop()
        for _ in range(20):
            task = asyncio.create_task(batcher.submit(rows(1)))
            loop.call_soon(time.sleep, 0.005)  # another callback hogs the loop before the flush runs
            await task
        return idle, batcher.congested

    assert asyncio.run(main()) == (False, True)


def test_a_batch_of_one_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        Batcher(Recorder(), max_rows=1, max_latency=0.01)

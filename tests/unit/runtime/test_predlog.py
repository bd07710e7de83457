"""The prediction log's rows, partitions, bounds and failures, written to a real directory."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from mlcycle_runtime.router import predlog

HOUR = datetime(2026, 12, 5, 11, tzinfo=UTC).timestamp()


class Outcomes:
    def __init__(self) -> None:
        self.rows: dict[str, int] = {}

    def __call__(self, outcome: str, n: int) -> None:
        self.rows[outcome] = self.rows.get(outcome, 0) + n


def log_to(uri: str, rate: float = 1.0, keys: tuple[str, ...] = ("customer_id",), clock=lambda: HOUR + 5):
    outcomes = Outcomes()
    settings = predlog.Settings(uri, rate, 60.0, keys)
    return predlog.PredictionLog("churn", settings, outcomes, rng=lambda: 0.5, clock=clock), outcomes


def read(root: Path):
    return ds.dataset(root, format="parquet", partitioning="hive").to_table().to_pylist()


def test_rows_are_written_under_their_deployment_and_hour_with_every_column(tmp_path):
    log, outcomes = log_to(str(tmp_path))
    log.add("v1", "stable", "req-1", [{"customer_id": 7, "plan": "basic"}, {"plan": "pro"}], [0.25, 0.75])
    log.add("v2", "shadow", "req-1", [{"customer_id": 7, "plan": "basic"}], [0.5])
    asyncio.run(log.flush())
    [part] = list(tmp_path.glob("deployment=churn/hour=2026-12-05T11/*.parquet"))
    assert part.name.startswith("part-")
    rows = sorted(read(tmp_path), key=lambda r: (r["version"], r["row"]))
    assert [(r["version"], r["role"], r["request_id"], r["row"], r["customer_id"], r["prediction"]) for r in rows] == [
        ("v1", "stable", "req-1", 0, "7", 0.25), ("v1", "stable", "req-1", 1, None, 0.75),
        ("v2", "shadow", "req-1", 0, "7", 0.5)]
    assert rows[0]["features"] == '{"customer_id":7,"plan":"basic"}'
    assert rows[0]["time"].timestamp() == HOUR + 5 and rows[0]["hour"] == "2026-12-05T11"
    assert outcomes.rows == {"written": 3}


def test_multiclass_answers_keep_their_probabilities(tmp_path):
    log, _ = log_to(str(tmp_path), keys=())
    log.add("v1", "stable", "r", [{"x": 1}], [[0.1, 0.7, 0.2]])
    asyncio.run(log.flush())
    [row] = read(tmp_path)
    assert row["prediction"] is None and row["probabilities"] == [0.1, 0.7, 0.2]


def test_an_hour_boundary_splits_the_rows_into_two_partitions(tmp_path):
    times = iter([HOUR - 1, HOUR + 1])
    log, _ = log_to(str(tmp_path), clock=lambda: next(times))
    log.add("v1", "stable", "a", [{"x": 1}], [0.1])
    log.add("v1", "stable", "b", [{"x": 2}], [0.2])
    asyncio.run(log.flush())
    assert sorted(p.name for p in (tmp_path / "deployment=churn").iterdir()) == [
        "hour=2026-12-05T10", "hour=2026-12-05T11"]


def test_sampling_follows_the_rate_and_no_settings_log_nothing():
    log, _ = log_to("file:///unused", rate=0.4)
    assert not log.sampled()  # the draw is 0.5
    assert log_to("file:///unused", rate=0.6)[0].sampled()
    log.configure(None)
    assert not log.sampled()


def test_a_full_buffer_drops_and_counts_rather_than_growing(tmp_path, monkeypatch):
    monkeypatch.setattr(predlog, "MAX_BUFFER_ROWS", 3)
    log, outcomes = log_to(str(tmp_path))
    log.add("v1", "stable", "a", [{}, {}], [0.1, 0.2])
    log.add("v1", "stable", "b", [{}, {}], [0.1, 0.2])  # 4 > 3: dropped whole
    asyncio.run(log.flush())
    assert outcomes.rows == {"buffer_full": 2, "written": 2}


def test_storage_that_cannot_be_written_costs_rows_counted_and_logged_once(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mlcycle.router.predlog")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the log's directory should be")
    log, outcomes = log_to(str(blocker / "predictions"))
    for rid in ("a", "b"):
        log.add("v1", "stable", rid, [{}], [0.1])
        asyncio.run(log.flush())
    assert outcomes.rows == {"write_failed": 2}
    assert len([r for r in caplog.records if "cannot write" in r.message]) == 1
    log.configure(predlog.Settings(str(tmp_path / "ok"), 1.0))
    log.add("v1", "stable", "c", [{}], [0.1])
    asyncio.run(log.flush())
    assert outcomes.rows["written"] == 1 and any("writing to" in r.message for r in caplog.records)


def test_no_partial_file_is_ever_visible_under_its_final_name(tmp_path, monkeypatch):
    seen: list[list[str]] = []
    real_mv = predlog.storage._fs(str(tmp_path))[0].__class__.mv

    def watching_mv(fs, source, target, **kwargs):
        seen.append(sorted(p.name for p in Path(target).parent.iterdir()))
        return real_mv(fs, source, target, **kwargs)

    monkeypatch.setattr(predlog.storage._fs(str(tmp_path))[0].__class__, "mv", watching_mv)
    log, _ = log_to(str(tmp_path))
    log.add("v1", "stable", "a", [{}], [0.1])
    asyncio.run(log.flush())
    [before_rename] = seen
    assert len(before_rename) == 1 and before_rename[0].startswith(".") and before_rename[0].endswith(".partial")
    assert read(tmp_path)[0]["request_id"] == "a"


def test_cancelling_the_writer_flushes_what_waits(tmp_path):
    async def main():
        log, outcomes = log_to(str(tmp_path))
        task = asyncio.create_task(log.run())
        await asyncio.sleep(0)
        log.add("v1", "stable", "a", [{}], [0.1])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return outcomes

    assert asyncio.run(main()).rows == {"written": 1}


@pytest.mark.parametrize(("given", "kept"), [("abc-123", True), ("", False), (None, False), ("a b", False),
                                             ("x" * 129, False), ("\x00", False)])
def test_a_clients_request_id_is_kept_when_sane(given, kept):
    rid = predlog.request_id(given)
    assert (rid == given) is kept and rid and len(rid) <= 128

"""Several operating-system processes on one state table, with compaction running at the same time,
and processes SIGKILLed at random moments: nothing that a returned call wrote is ever lost."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from aperio_assets.config import CompactionSettings, S3Settings
from aperio_assets.processes import worker_process
from aperio_assets.state import ParquetPartitionStatusStore
from aperio_assets.storage import LocalStorage, S3Storage
from aperio_tests.helpers import StorageCase, process_context

SCHEMA = "sales"


def _tracker(kind: str, endpoint: str | None, root: str, max_small_files: int = 8):
    storage = (
        S3Storage(S3Settings(endpoint_url=endpoint), aperio_root=root)
        if kind == "s3"
        else LocalStorage(aperio_root=root)
    )
    return ParquetPartitionStatusStore(
        storage, SCHEMA, CompactionSettings(max_small_files=max_small_files, tombstone_retention_seconds=0)
    )


def _writer(kind, endpoint, root, me: int, count: int, start) -> None:
    tracker = _tracker(kind, endpoint, root)
    start.wait(timeout=120)
    for i in range(count):
        if i % 5 == 4:  # every fifth call is a batch of three
            tracker.mark_many(
                [{"alternate": f"w{me}", "source_table": "t", "key_values": {"i": f"{i}.{j}"}} for j in range(3)]
            )
        else:
            tracker.mark_processed(f"w{me}", "t", {"i": str(i)}, row_count=i)
        tracker.mark_processed("everyone", "t", {}, row_count=me * 1000 + i)


def _compactor(kind, endpoint, root, stop, rounds) -> None:
    tracker = _tracker(kind, endpoint, root)
    n = 0
    while not stop.is_set():
        tracker.compact()
        n += 1
        time.sleep(0.01)
    rounds.put(n)


def _root(case: StorageCase) -> str:
    return case.provider.aperio_root


@pytest.mark.slow
def test_writers_and_a_compactor_lose_nothing(storage_case: StorageCase) -> None:
    writers, count = 4, 30
    ctx = process_context()
    endpoint = storage_case.s3.endpoint_url if storage_case.s3 else None
    start, stop, rounds = ctx.Barrier(writers + 1), ctx.Event(), ctx.Queue()
    args = (storage_case.kind, endpoint, _root(storage_case))
    procs = [worker_process(ctx, _writer, (*args, n, count, start)) for n in range(writers)]
    compactor = worker_process(ctx, _compactor, (*args, stop, rounds))
    for p in [*procs, compactor]:
        p.start()
    start.wait(timeout=120)
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    stop.set()
    compactions = rounds.get(timeout=60)
    compactor.join(timeout=60)
    assert compactor.exitcode == 0 and compactions > 0

    per_writer = sum(3 if i % 5 == 4 else 1 for i in range(count))
    for tracker in (_tracker(*args), _tracker(*args)):
        for n in range(writers):
            assert len(tracker.get_processed_key_values(f"w{n}")) == per_writer
        (everyone,) = tracker.status_rows("everyone")
        # last writer wins: the winner is some writer's final update
        assert everyone["row_count"] in {n * 1000 + count - 1 for n in range(writers)}
        assert all(not s.bad_files for s in tracker.stats())
        tracker.compact()
    final = _tracker(*args)
    assert sum(len(final.get_processed_key_values(f"w{n}")) for n in range(writers)) == writers * per_writer
    assert [s.files for s in final.stats()] == [1, 0]


# -- SIGKILL at random moments ---------------------------------------------------------------------


def _logging_writer(kind, endpoint, root, me: int, log_path: str) -> None:
    """Marks keys forever; after each call RETURNS, appends its keys to a log (fsynced)."""
    tracker = _tracker(kind, endpoint, root, max_small_files=6)
    with open(log_path, "a", encoding="utf-8") as log:
        i = 0
        while True:
            keys = [f"{me}-{os.getpid()}-{i}-{j}" for j in range(1 + i % 3)]
            tracker.mark_many([{"alternate": "a", "source_table": "t", "key_values": {"k": k}} for k in keys])
            log.write("".join(k + "\n" for k in keys))
            log.flush()
            os.fsync(log.fileno())
            i += 1


def _looping_compactor(kind, endpoint, root) -> None:
    tracker = _tracker(kind, endpoint, root)
    while True:
        tracker.compact()


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_returned_write(storage_case: StorageCase, tmp_path: Path) -> None:
    ctx = process_context()
    rng = random.Random(1234)
    endpoint = storage_case.s3.endpoint_url if storage_case.s3 else None
    args = (storage_case.kind, endpoint, _root(storage_case))
    logs = [tmp_path / f"writer-{n}.log" for n in range(3)]
    for _ in range(4):
        procs = [worker_process(ctx, _logging_writer, (*args, n, str(log))) for n, log in enumerate(logs)]
        procs.append(worker_process(ctx, _looping_compactor, args))
        sizes = [log.stat().st_size if log.exists() else 0 for log in logs]
        for p in procs:
            p.start()
        # imports take a while (longer on a loaded machine): wait until every writer has returned a
        # write this round, then let them race for a moment
        deadline = time.monotonic() + 120
        while not all(log.exists() and log.stat().st_size > size for log, size in zip(logs, sizes, strict=True)):
            assert time.monotonic() < deadline, "a writer returned no write within 120 s of its start"
            time.sleep(0.05)
        time.sleep(0.5 + rng.random() * 1.5)
        rng.shuffle(procs)
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
            time.sleep(rng.random() * 0.2)
        for p in procs:
            p.join(timeout=30)
            assert p.exitcode == -signal.SIGKILL

    returned = {line.strip() for log in logs for line in log.read_text().splitlines() if line.strip()}
    assert len(returned) > 20  # the writers really got work done between kills

    reader = _tracker(*args)
    stats = reader.stats()
    assert all(not s.bad_files for s in stats), [s.bad_files for s in stats]  # no partial file visible
    present = {kv["k"] for kv in reader.get_processed_key_values("a")}
    assert returned <= present, sorted(returned - present)[:5]
    reader.compact()
    after = {kv["k"] for kv in _tracker(*args).get_processed_key_values("a")}
    assert after == present

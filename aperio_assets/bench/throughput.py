"""Throughput over writers: 1, 2, 4, 8 writer processes marking single batches into ONE state table,
shared mode on local disk and on the loopback S3, and the legacy DuckDB store on local disk for
comparison (its writers take turns on the file's lock). Aggregate marks per second = all marks /
(last writer's end - first writer's start); writers start together at a barrier. Every mark is
counted back afterwards: a run that lost one fails.
"""

from __future__ import annotations

import contextlib
import os
import queue
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aperio_assets.bench.s3server import loopback_s3
from aperio_assets.config import CompactionSettings, S3Settings
from aperio_assets.errors import AperioError
from aperio_assets.processes import worker_context, worker_process
from aperio_assets.state import DuckDBPartitionStatusStore, IncrementalTracker, ParquetPartitionStatusStore
from aperio_assets.storage import LocalStorage, S3Storage

WRITERS = (1, 2, 4, 8)
SERIES = ("shared/local", "shared/s3", "legacy/local")
PRELOAD = ["aperio_assets.bench.throughput", "s3fs"]  # (what a writer imports, once, in the fork server)


@dataclass
class ThroughputRow:
    series: str  # mode/storage
    writers: int
    marks: int
    seconds: float
    marks_per_second: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _open(target: dict[str, str]) -> IncrementalTracker:
    if target["kind"] == "legacy":
        return DuckDBPartitionStatusStore(target["path"])
    if target["kind"] == "s3":
        storage = S3Storage(S3Settings(endpoint_url=target["endpoint"]), aperio_root=target["root"])
    else:
        storage = LocalStorage(aperio_root=target["root"])
    return ParquetPartitionStatusStore(storage, "bench", CompactionSettings())


def _writer(target: dict[str, str], index: int, marks: int, barrier: Any, out: Any) -> None:
    tracker = _open(target)
    barrier.wait()
    started = time.time()
    for i in range(marks):
        tracker.mark_processed("events", "events", {"writer": str(index), "n": str(i)}, row_count=i)
    out.put((started, time.time()))


def _run(target: dict[str, str], writers: int, marks: int) -> tuple[float, float]:
    context = worker_context(PRELOAD)  # (forked from a fork server: no thread or socket of this process)
    barrier, out = context.Barrier(writers), context.Queue()
    processes = [worker_process(context, _writer, (target, i, marks, barrier, out)) for i in range(writers)]
    for p in processes:
        p.start()
    spans: list[tuple[float, float]] = []
    deadline = time.monotonic() + 900
    while len(spans) < len(processes):
        try:
            spans.append(out.get(timeout=1))
        except queue.Empty:
            # A writer that died (its traceback is on stderr) sends nothing: say so now, not at the deadline.
            failed = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                for p in processes:
                    p.kill()
                raise AperioError(
                    f"a benchmark writer exited with {failed[0]}" if failed else "the benchmark writers did not finish"
                ) from None
    for p in processes:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise AperioError(f"a benchmark writer exited with {p.exitcode}")
    found = len(_open(target).get_processed_key_values("events"))
    if found != writers * marks:
        raise AperioError(f"{target['kind']}: {writers} writers marked {writers * marks} batches, {found} are there")
    return min(s for s, _ in spans), max(e for _, e in spans)


def measure_throughput(
    marks: int = 100,
    writers: tuple[int, ...] = WRITERS,
    series: tuple[str, ...] = SERIES,
    progress: Callable[[str], None] | None = None,
) -> list[ThroughputRow]:
    note = progress or (lambda message: None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="aperio-throughput-") as tmp, contextlib.ExitStack() as stack:
        endpoint = stack.enter_context(loopback_s3()) if "shared/s3" in series else None
        for name in series:
            for n in writers:
                note(f"{name}: {n} writer(s)")
                place = Path(tmp) / f"{name.replace('/', '-')}-{n}"
                if name == "legacy/local":
                    target = {"kind": "legacy", "path": str(place / ".partition_status.duckdb")}
                elif name == "shared/s3":
                    assert endpoint is not None
                    target = {
                        "kind": "s3",
                        "endpoint": endpoint.endpoint_url,
                        "root": f"s3://{endpoint.bucket}/throughput-{n}",
                    }
                else:
                    target = {"kind": "local", "root": str(place)}
                start, end = _run(target, n, marks)
                total = n * marks
                rows.append(ThroughputRow(name, n, total, round(end - start, 3), round(total / (end - start), 1)))
    return rows


def plot(rows: list[ThroughputRow], path: str | os.PathLike[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r.series for r in rows):
        points = [(r.writers, r.marks_per_second) for r in rows if r.series == name]
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    axes.set_xscale("log", base=2)
    axes.set_xticks(sorted({r.writers for r in rows}), labels=[str(w) for w in sorted({r.writers for r in rows})])
    axes.set_xlabel("writer processes")
    axes.set_ylabel("marks per second (all writers)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)

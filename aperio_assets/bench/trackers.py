"""Local mode (legacy DuckDB store) against shared mode (Parquet state tables), side by side.

Operations, each timed over interleaved repetitions (local, shared, local, shared, …) and reported
as medians: cold open + first lookup, warm lookup, one mark, a batch of 1,000 marks, and
``filter_unprocessed`` over 10,000 combinations. Run: ``python -m aperio_assets.bench.trackers``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aperio_assets.config import CompactionSettings
from aperio_assets.state import DuckDBPartitionStatusStore, IncrementalTracker, ParquetPartitionStatusStore
from aperio_assets.storage import LocalStorage, StorageProvider

ALTERNATE = "flights"
OPERATIONS = ("cold_open_lookup", "warm_lookup", "single_mark", "batch_1000", "filter_unprocessed_10k")


def batch_key(i: int) -> dict[str, str]:
    return {"year": str(2000 + i // 1000), "n": str(i % 1000)}


def records(start: int, count: int) -> list[dict[str, Any]]:
    return [{"alternate": ALTERNATE, "source_table": ALTERNATE, "key_values": batch_key(i), "row_count": i,
             "target_pattern": f"tables/{ALTERNATE}/*.parquet"} for i in range(start, start + count)]


@dataclass
class Side:
    """One mode under test: how to open a fresh tracker on its state."""

    name: str
    open: Callable[[], IncrementalTracker]
    storage: StorageProvider | None = None


def _seed(side: Side, keys: int) -> IncrementalTracker:
    tracker = side.open()
    for start in range(0, keys, 50_000):
        tracker.mark_many(records(start, min(50_000, keys - start)))
    if isinstance(tracker, ParquetPartitionStatusStore):
        tracker.compact()  # the steady state the schedule keeps: one compacted file
    return tracker


def measure(keys: int, repetitions: int, root: Path) -> list[dict[str, Any]]:
    sides = [
        Side("local", lambda: DuckDBPartitionStatusStore(root / "local" / ".partition_status.duckdb")),
        Side("shared", lambda: ParquetPartitionStatusStore(
            LocalStorage(aperio_root=str(root / "shared")), "bench", CompactionSettings())),
    ]
    warm = {side.name: _seed(side, keys) for side in sides}
    for tracker in warm.values():
        tracker.is_processed(ALTERNATE, ALTERNATE, batch_key(0))
    next_key = {side.name: keys for side in sides}
    combos = [batch_key(i) for i in range(0, 2 * keys, max(1, 2 * keys // 10_000))][:10_000]
    timings: dict[tuple[str, str], list[float]] = {}

    def timed(op: str, side: Side, fn: Callable[[], object]) -> None:
        start = time.perf_counter()
        fn()
        timings.setdefault((op, side.name), []).append((time.perf_counter() - start) * 1000)

    for rep in range(repetitions):
        for side in sides if rep % 2 == 0 else reversed(sides):
            tracker = warm[side.name]
            probe = batch_key((rep * 7919) % keys)
            timed("cold_open_lookup", side, lambda s=side, p=probe: s.open().is_processed(ALTERNATE, ALTERNATE, p))
            timed("warm_lookup", side, lambda t=tracker, p=probe: t.is_processed(ALTERNATE, ALTERNATE, p))
            n = next_key[side.name]
            timed("single_mark", side, lambda t=tracker, n=n: t.mark_many(records(n, 1)))
            timed("batch_1000", side, lambda t=tracker, n=n: t.mark_many(records(n + 1, 1000)))
            next_key[side.name] = n + 1001
            timed("filter_unprocessed_10k", side,
                  lambda t=tracker: t.filter_unprocessed(ALTERNATE, ALTERNATE, combos))
    rows = []
    for op in OPERATIONS:
        local = statistics.median(timings[(op, "local")])
        shared = statistics.median(timings[(op, "shared")])
        rows.append({"operation": op, "storage": "local", "keys": keys, "local_ms": round(local, 3),
                     "shared_ms": round(shared, 3), "ratio": round(shared / local, 3)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--repetitions", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    for keys in args.keys:
        with tempfile.TemporaryDirectory(prefix="aperio-bench-") as tmp:
            rows += measure(keys, args.repetitions, Path(tmp))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'operation':24s} {'keys':>7s} {'local ms':>10s} {'shared ms':>10s} {'ratio':>7s}")
    for r in rows:
        print(f"{r['operation']:24s} {r['keys']:7d} {r['local_ms']:10.3f} {r['shared_ms']:10.3f} {r['ratio']:7.3f}")


if __name__ == "__main__":
    main()

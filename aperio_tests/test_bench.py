"""`aperio bench` runs and reports every row (speed itself is never asserted: DESIGN §11 numbers live in
docs/BENCHMARKS.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from aperio_assets.bench.suite import OPERATIONS, STORAGES
from aperio_assets.bench.throughput import measure_throughput, plot


def test_quick_bench_reports_every_operation_on_every_storage() -> None:
    aperio = Path(sys.executable).with_name("aperio")
    done = subprocess.run(
        [str(aperio), "bench", "--quick", "--json"], capture_output=True, text=True, timeout=1800, env={**os.environ}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout)
    assert [(r["operation"], r["storage"]) for r in rows] == [
        (op, storage) for storage in STORAGES for op in OPERATIONS
    ]
    for r in rows:
        assert set(r) >= {"operation", "storage", "keys", "local_ms", "shared_ms", "ratio", "s3_requests"}
        assert r["keys"] == 10_000
        assert r["local_ms"] > 0 and r["shared_ms"] > 0
        assert (
            r["ratio"] == round(r["shared_ms"] / r["local_ms"], 3)
            or abs(r["ratio"] - r["shared_ms"] / r["local_ms"]) < 0.01
        )
    s3 = {r["operation"]: r["s3_requests"] for r in rows if r["storage"] == "s3"}
    # the request counts are what the protocol promises: a mark is one PUT, a warm lookup one LIST
    assert s3["single_mark"] == {"PUT": 1}
    assert s3["batch_1000"] == {"PUT": 1}
    assert s3["warm_lookup"] == {"LIST": 1}
    assert s3["compact_1000_files"]["PUT"] == 1001 and s3["compact_1000_files"]["GET"] == 1001
    assert all(r["s3_requests"] == {} for r in rows if r["storage"] == "local")


def test_throughput_counts_every_mark_and_plots(tmp_path: Path) -> None:
    rows = measure_throughput(marks=5, writers=(1, 2), series=("shared/local", "legacy/local"))
    assert [(r.series, r.writers, r.marks) for r in rows] == [
        ("shared/local", 1, 5),
        ("shared/local", 2, 10),
        ("legacy/local", 1, 5),
        ("legacy/local", 2, 10),
    ]
    assert all(r.marks_per_second > 0 for r in rows)
    plot(rows, tmp_path / "throughput.png", "test")
    assert (tmp_path / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

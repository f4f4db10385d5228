"""`aperio bench` runs and reports every row (speed itself is never asserted: DESIGN §11 numbers live in
docs/BENCHMARKS.md). The suite runs the bench at its smoke size: every row and mode, in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aperio_assets.bench.lakescale import OPERATIONS as LAKE_OPERATIONS
from aperio_assets.bench.lakescale import lake_paths
from aperio_assets.bench.suite import OPERATIONS, SMOKE_COMPACT_FILES, BenchRow, judge_requests, minimum_requests
from aperio_assets.bench.throughput import measure_throughput, plot
from aperio_assets.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def test_smoke_bench_reports_every_operation_on_every_storage_and_latency(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--smoke", "--s3-latency", "0,2", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0, rows
    places = [("local", None), ("s3", 0.0), ("s3", 2.0)]
    assert [(r["operation"], r["storage"], r["s3_latency_ms"]) for r in rows] == [
        (op, storage, latency) for storage, latency in places for op in OPERATIONS
    ]
    for r in rows:
        assert set(r) >= {
            "operation",
            "storage",
            "keys",
            "local_ms",
            "shared_ms",
            "ratio",
            "s3_requests",
            "min_requests",
            "min_met",
            "requests_over_min",
            "proxy_requests",
        }
        assert r["keys"] == 1_000
        assert r["local_ms"] > 0 and r["shared_ms"] > 0
        assert abs(r["ratio"] - r["shared_ms"] / r["local_ms"]) < 0.01
    local = [r for r in rows if r["storage"] == "local"]
    assert all(r["s3_requests"] == {} and r["min_requests"] == {} and r["min_met"] is None for r in local)
    compact = [r for r in rows if r["operation"] == "compact_1000_files"]
    assert all(r["detail"]["marks"] == SMOKE_COMPACT_FILES for r in compact)
    marks = SMOKE_COMPACT_FILES
    for latency in (0.0, 2.0):
        s3 = {r["operation"]: r for r in rows if r["storage"] == "s3" and r["s3_latency_ms"] == latency}
        # the request counts are what the protocol promises: a mark is one PUT, a warm lookup one LIST, a
        # cold one a LIST and a GET of the compacted file (in this process or in a fresh one)
        assert s3["single_mark"]["s3_requests"] == {"PUT": 1}
        assert s3["batch_1000"]["s3_requests"] == {"PUT": 1}
        assert s3["warm_lookup"]["s3_requests"] == {"LIST": 1}
        assert s3["filter_unprocessed_10k"]["s3_requests"] == {"LIST": 1}
        assert s3["cold_open_lookup"]["s3_requests"] == {"LIST": 1, "GET": 1}
        assert s3["fresh_process_lookup"]["s3_requests"] == {"LIST": 1, "GET": 1}
        requests = s3["compact_1000_files"]["s3_requests"]
        assert requests["PUT"] == marks + 1 and requests["GET"] == marks + 1
        for op in ("single_mark", "batch_1000", "warm_lookup", "filter_unprocessed_10k", "cold_open_lookup"):
            assert s3[op]["min_met"] is True and s3[op]["requests_over_min"] == 0, s3[op]
        for r in s3.values():  # every S3 row has its minimum, and what is above it is counted, not hidden
            assert r["min_requests"] == minimum_requests(r["operation"], marks)
            over = sum(max(0, n - r["min_requests"].get(k, 0)) for k, n in r["s3_requests"].items())
            assert r["requests_over_min"] == over and r["min_met"] == (over == 0)
            # the proxy sees every request aperio made (and DuckDB's, if any); none without a proxy
            if latency == 0:
                assert r["proxy_requests"] is None
            else:
                assert r["proxy_requests"] >= sum(r["s3_requests"].values()), r
        if latency:
            assert s3["single_mark"]["proxy_requests"] == 1 and s3["warm_lookup"]["proxy_requests"] == 1


def test_requests_above_the_minimum_are_reported() -> None:
    row = BenchRow("connect_10_views", "s3", 10, 1.0, 2.0, 2.0, {"LIST": 6, "GET": 2})
    judge_requests(row, 1000)
    assert row.min_requests == {"LIST": 4}
    assert (row.min_met, row.requests_over_min) == (False, 4)
    row = BenchRow("compact_1000_files", "s3", 10, 1.0, 2.0, 2.0, {"PUT": 1001, "GET": 1001, "LIST": 1, "DELETE": 2})
    judge_requests(row, 1000)
    assert (row.min_met, row.requests_over_min) == (True, 0)
    with pytest.raises(SystemExit):
        main(["bench", "--smoke", "--s3-latency", "-1"])
    with pytest.raises(SystemExit):
        main(["bench", "--lake-scale", "x.png", "--s3-latency", "0,20"])


def test_lake_scale_reports_every_operation_and_checks_the_targets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "lakescale.png"
    argv = ["bench", "--lake-scale", str(png), "--lake-files", "30", "--lake-s3-files", "30", "--s3-latency", "2"]
    code = main([*argv, "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0, rows
    assert [(r["storage"], r["files"], r["operation"]) for r in rows] == [
        (storage, 30, op) for storage in ("local", "s3") for op in LAKE_OPERATIONS
    ]
    tables = 1 + sum(1 for p in lake_paths(30) if "/events/" not in p)  # events + the one-file tables
    for r in rows:
        assert r["seconds"] > 0
        assert r["tables"] == (tables + 1 if r["operation"] == "changed_connect" else tables)
        assert (r["s3_latency_ms"], r["proxy_requests"] is None) == (
            (2.0, False) if r["storage"] == "s3" else (None, True)
        )
        if r["operation"] in ("noop_refresh", "warm_connect", "changed_connect"):
            assert r["target"] and r["verdict"], r
        else:
            assert r["target"] is None
        if r["operation"] == "noop_refresh":  # reads no raw or converted file: the refresh's own promise
            assert (r["raw_gets"], r["converted_gets"], r["target_met"]) == (0, 0, True), r
            assert r["detail"]["converted"] == 0 and r["detail"]["model_written"] is False
            assert r["list_pages"] == r["requests"]["LIST"] >= 1
        if r["operation"] in ("first_connect", "warm_connect", "changed_connect"):
            assert r["detail"]["views"] >= r["tables"]  # every table's view is there
        if r["operation"] == "first_connect":  # a fresh process with an empty cache builds it ...
            assert r["detail"]["cache"] == "built"
        if r["operation"] == "warm_connect":  # ... which this process then finds
            assert r["detail"]["untimed_connect_cache"] == "hit" and r["detail"]["cache"] == "hit"
        if r["storage"] == "s3":  # the proxy sees every request aperio made, and DuckDB's
            assert r["proxy_requests"] >= sum(r["requests"].values()), r
    assert png.read_bytes()[:8] == PNG


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
    assert (tmp_path / "throughput.png").read_bytes()[:8] == PNG


def test_a_throughput_writer_that_dies_is_reported_at_once(tmp_path: Path) -> None:
    """A writer that dies sends no result: the bench says which exit it had, without waiting out its
    15-minute deadline (a damaged legacy file: each writer's first mark raises)."""
    from aperio_assets.bench.throughput import _run
    from aperio_assets.errors import AperioError

    damaged = tmp_path / ".partition_status.duckdb"
    damaged.write_bytes(b"this is not a duckdb database" * 100)
    with pytest.raises(AperioError, match="a benchmark writer exited with 1"):
        _run({"kind": "legacy", "path": str(damaged)}, 2, 5)

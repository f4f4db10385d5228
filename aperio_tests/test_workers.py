"""`aperio refresh --workers N`: the conversions shared out to N processes leave the same state,
model and tables as one process (local disk and the loopback S3)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest

from aperio_assets import layout
from aperio_assets.cli import main
from aperio_assets.conversion import parallel
from aperio_assets.conversion.parallel import MIN_FILES_PER_WORKER_S3, shares
from aperio_assets.conversion.refresh import refresh
from aperio_assets.lake import Lake
from aperio_tests.helpers import LakeCase, assert_same_state, lake_state, parquet_bytes, put


def _fill(lake: Lake, version: int) -> None:
    """40 batches of a Hive table (two files each), a plain folder of 12 files (one batch),
    10 one-file tables, raw Parquet and a file that fails; ``version`` 2 changes, adds and removes some."""

    if version == 1:
        for year in range(2000, 2020):
            for month in ("01", "02"):
                for part in ("a", "b"):
                    put(lake, f"sales/events/year={year}/month={month}/{part}.csv", f"v,w\n{year},{part}\n".encode())
        for i in range(12):
            put(lake, f"sales/logs/2024-{i:02d}/app.csv", f"line\n{i}\n".encode())
        for i in range(10):
            put(lake, f"sales/t{i}.csv", f"x\n{i}\n".encode())
        put(lake, "sales/p.parquet", parquet_bytes(pl.DataFrame({"x": [1, 2]})))
        put(lake, "sales/bad.json", b"{not json")
    else:
        put(lake, "sales/events/year=2001/month=01/a.csv", b"v,w\n1,changed\n")
        put(lake, "sales/events/year=2030/month=01/a.csv", b"v,w\n2030,new\n")
        put(lake, "sales/logs/2024-99/app.csv", b"line\n99\n")
        lake.lake_storage.delete(lake.lake_storage.join(lake.config.base_directory, "sales/t3.csv"))


def _state_files(lake: Lake, name: str) -> int:
    return len(lake.storage.list(lake.storage.aperio_path("sales", name)))


@pytest.mark.slow
def test_four_workers_leave_the_state_one_leaves(
    lake_case: LakeCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # four workers even on local disk and this small lake (the default thresholds would use one)
    monkeypatch.setattr(parallel, "MIN_FILES_PER_WORKER_LOCAL", 8)
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 4)
    one, four = lake_case.sibling(tmp_path, "one"), lake_case.sibling(tmp_path, "four")
    for version in (1, 2):
        _fill(one, version)
        _fill(four, version)
        (single,) = refresh(one, workers=1)
        (spread,) = refresh(four, workers=4)
        assert_same_state(lake_state(four), lake_state(one))
        for status in ("converted", "skipped", "failed", "removed"):
            assert spread.count("files", status) == single.count("files", status)
        for status in ("processed", "skipped", "failed", "removed", "pending"):
            assert spread.count("batches", status) == single.count("batches", status)
        if version == 1:
            assert single.count("files", "converted") == 80 + 12 + 10 + 1
            # each worker wrote its own lineage and marks: more state files than the one process
            assert _state_files(one, layout.CONVERSIONS) == 1
            assert _state_files(four, layout.CONVERSIONS) >= 4 and _state_files(four, layout.PARTITION_STATUS) >= 4
    assert single.count("files", "converted") == 3 and single.count("files", "removed") == 1
    assert "events" in lake_state(four)["tables"] and len(lake_state(four)["tables"]["events"]) == 81


def test_shares_keep_batches_together_and_split_only_big_ones() -> None:
    from aperio_assets.conversion.discovery import RawFile, RawTable
    from aperio_assets.storage import FileInfo

    table = RawTable("t", folder=True)
    todo = []
    for batch in range(10):
        for part in range(4):
            raw = RawFile(
                FileInfo(f"/l/t/k={batch}/{part}.csv", 1000, 0.0, None),
                f"k={batch}/{part}.csv",
                "csv",
                (("k", str(batch)),),
            )
            table.files.append(raw)
            todo.append((table, raw))
    big = [RawFile(FileInfo(f"/l/t/big/{i}.csv", 50_000_000, 0.0, None), f"big/{i}.csv", "csv") for i in range(4)]
    todo += [(table, raw) for raw in big]
    parts = shares(todo, 4)
    assert len(parts) == 4 and sorted(p for part in parts for p in part) == sorted(raw.path for _, raw in todo)
    for batch in range(10):  # a small batch is never split
        assert sum(1 for part in parts if any(f"/k={batch}/" in p for p in part)) == 1
    assert all(sum(1 for p in part if "/big/" in p) == 1 for part in parts)  # the big one is spread
    assert shares(todo[: MIN_FILES_PER_WORKER_S3 * 2 - 1], 4) == [[raw.path for _, raw in todo[:15]]]
    # on local disk a worker needs far more files to pay for its start, and never more than the cores
    assert len(shares(todo, 4, remote=False)) == 1
    assert len(shares(todo * 20, 4, remote=False)) == min(4, os.cpu_count() or 1)


@pytest.mark.slow
def test_cli_refresh_takes_workers(lake_case: LakeCase, capsys) -> None:
    lake = lake_case.lake()
    _fill(lake, 1)
    assert main(["--config", lake_case.config_path, "refresh", "--workers", "3", "--json"]) == 1  # bad.json
    (summary,) = json.loads(capsys.readouterr().out)
    assert summary["files"]["converted"] == 80 + 12 + 10 + 1 + 1  # and the fixture's orders.csv
    (failure,) = summary["failures"]
    # the message names the raw file, not the copy a worker downloaded from S3
    assert "'bad.json'" in failure["error"] and "source-" not in failure["error"]
    with pytest.raises(SystemExit) as usage:
        main(["--config", lake_case.config_path, "refresh", "--workers", "0"])
    assert usage.value.code == 2 and "--workers: must be 1 or more" in capsys.readouterr().err

"""`aperio refresh --workers N`: the conversions shared out to N processes leave the same state,
model and tables as one process (local disk and the loopback S3)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest

from aperio_assets import layout
from aperio_assets.catalog import connect
from aperio_assets.cli import main
from aperio_assets.conversion import parallel
from aperio_assets.conversion.parallel import MIN_FILES_PER_WORKER_S3, shares
from aperio_assets.conversion.refresh import refresh
from aperio_assets.lake import Lake, open_lake
from aperio_assets.state.access import open_state
from aperio_tests.conftest import LakeCase
from aperio_tests.test_refresh import parquet_bytes

TIMES = {"converted_at", "processed_at", "updated_at", "generatedAt", "source_modified"}


def _twin(lake_case: LakeCase, tmp_path: Path, name: str) -> Lake:
    """A second lake like the test's, under ``<parent>/<name>``."""
    base = lake_case.base.rsplit("/", 1)[0] + "/" + name
    config = tmp_path / f"{name}.yaml"
    text = Path(lake_case.config_path).read_text()
    config.write_text(
        text.replace(f"baseDirectory: {lake_case.base}", f"baseDirectory: '{base}'").replace(
            "baseDirectory: lake", f"baseDirectory: '{base}'"
        )
    )
    if lake_case.kind == "local":
        Path(base).mkdir()
    return open_lake(config)


def _fill(lake: Lake, version: int) -> None:
    """40 batches of a Hive table (two files each), a plain folder of 12 files (one batch),
    10 one-file tables, raw Parquet and a file that fails; ``version`` 2 changes, adds and removes some."""

    def put(relative: str, data: bytes) -> None:
        lake.lake_storage.write_bytes(lake.lake_storage.join(lake.config.base_directory, relative), data)

    if version == 1:
        for year in range(2000, 2020):
            for month in ("01", "02"):
                for part in ("a", "b"):
                    put(f"sales/events/year={year}/month={month}/{part}.csv", f"v,w\n{year},{part}\n".encode())
        for i in range(12):
            put(f"sales/logs/2024-{i:02d}/app.csv", f"line\n{i}\n".encode())
        for i in range(10):
            put(f"sales/t{i}.csv", f"x\n{i}\n".encode())
        put("sales/p.parquet", parquet_bytes(pl.DataFrame({"x": [1, 2]})))
        put("sales/bad.json", b"{not json")
    else:
        put("sales/events/year=2001/month=01/a.csv", b"v,w\n1,changed\n")
        put("sales/events/year=2030/month=01/a.csv", b"v,w\n2030,new\n")
        put("sales/logs/2024-99/app.csv", b"line\n99\n")
        lake.lake_storage.delete(lake.lake_storage.join(lake.config.base_directory, "sales/t3.csv"))


def _state(lake: Lake) -> dict:
    """Everything a refresh leaves, with times dropped and the lake's own location made relative."""
    base, aperio = lake.config.base_directory, lake.config.aperio_directory

    def clean(value):
        return value.replace(aperio, "<aperio>").replace(base, "<base>") if isinstance(value, str) else value

    def rows(name: str) -> list:
        return sorted(
            json.dumps({k: clean(v) for k, v in r.items() if k not in TIMES}, sort_keys=True, default=str)
            for r in open_state(lake, "sales", name).rows()
        )

    model = json.loads(lake.storage.read_bytes(lake.storage.aperio_path("sales", layout.GENERATED_MODEL)))
    model.pop("generatedAt")
    con = connect(lake)
    tables = {}
    for (view,) in con.execute("SELECT view_name FROM duckdb_views() WHERE schema_name = 'sales'").fetchall():
        tables[view] = sorted(map(repr, con.execute(f'SELECT * FROM sales."{view}"').fetchall()))
    return {
        "lineage": rows(layout.CONVERSIONS),
        "status": rows(layout.PARTITION_STATUS),
        "model": json.loads(clean(json.dumps(model))),
        "tables": tables,
    }


def _assert_same(got: dict, expected: dict) -> None:
    for part in expected:  # part by part, naming what differs
        if isinstance(expected[part], list):
            assert (
                sorted(set(got[part]) - set(expected[part])) == []
                and sorted(set(expected[part]) - set(got[part])) == []
            ), part
        assert got[part] == expected[part], part


def _state_files(lake: Lake, name: str) -> int:
    return len(lake.storage.list(lake.storage.aperio_path("sales", name)))


def test_four_workers_leave_the_state_one_leaves(
    lake_case: LakeCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # four workers even on local disk and this small lake (the default thresholds would use one)
    monkeypatch.setattr(parallel, "MIN_FILES_PER_WORKER_LOCAL", 8)
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 4)
    one, four = _twin(lake_case, tmp_path, "one"), _twin(lake_case, tmp_path, "four")
    for version in (1, 2):
        _fill(one, version)
        _fill(four, version)
        (single,) = refresh(one, workers=1)
        (spread,) = refresh(four, workers=4)
        _assert_same(_state(four), _state(one))
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
    assert "events" in _state(four)["tables"] and len(_state(four)["tables"]["events"]) == 81


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

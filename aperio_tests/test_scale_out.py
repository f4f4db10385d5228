"""The scale-out proof (DESIGN §9, §11): two Dagster instances — separate DAGSTER_HOMEs, separate
processes — refresh one lake in the loopback S3 as Dagster runs at the same time. The state
is shared, complete and duplicate-free; a later run from either instance processes nothing; no
lock file, DuckDB database or WAL ever appears in the bucket."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from aperio_assets.catalog.connect import connect
from aperio_assets.lake import open_lake
from aperio_assets.state import open_lineage, open_tracker
from aperio_assets.storage import S3Storage
from aperio_tests.helpers import S3Server, dagster_home, finish, start_refresh

MONTHS = [f"{m:02d}" for m in range(1, 7)]


def write_lake(storage: S3Storage, base: str) -> dict[str, int]:
    """Two schemas; `orders` has 6 monthly partitions of 2 files. Returns rows per table."""
    for month in MONTHS:
        for part in range(2):
            rows = "".join(f"{month}{part}{i},{i}\n" for i in range(int(month) + part))
            storage.write_bytes(
                f"{base}/sales/orders/year=2024/month={month}/part-{part}.csv", f"id,amount\n{rows}".encode()
            )
    storage.write_bytes(f"{base}/sales/customers.csv", b"id,name\n1,Ann\n2,Bob\n3,Cy\n")
    storage.write_bytes(f"{base}/ref/regions.json", b'[{"code": "N"}, {"code": "S"}]')
    storage.write_bytes(f"{base}/ref/rates.jsonl", b'{"r": 1}\n{"r": 2}\n{"r": 3}\n{"r": 4}\n')
    orders = sum(int(m) + p for m in MONTHS for p in range(2))
    return {"sales.orders": orders, "sales.customers": 3, "ref.regions": 2, "ref.rates": 4}


@contextlib.contextmanager
def open_instance(home: Path) -> Iterator[dg.DagsterInstance]:
    """The instance of a DAGSTER_HOME (its dagster.yaml reads $DAGSTER_HOME while loading)."""
    previous = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield instance
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = previous


def latest_metadata(home: Path, key: list[str]) -> dict[str, object]:
    with open_instance(home) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(key))
        assert event is not None and event.asset_materialization is not None
        return {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}


def successful_runs(home: Path) -> dict[str, int]:
    with open_instance(home) as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]))
        return {job: sum(1 for r in runs if r.job_name == job) for job in {r.job_name for r in runs}}


@pytest.mark.slow
def test_two_dagster_instances_refresh_one_s3_lake_at_once(s3: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    base = f"s3://{s3_bucket}/lake"
    storage = S3Storage(s3.settings())
    expected_rows = write_lake(storage, base)
    config = tmp_path / "aperio.yaml"
    config.write_text(f"baseDirectory: {base}\nstorage:\n  s3:\n    endpoint_url: {s3.endpoint_url}\n")
    homes = [dagster_home(tmp_path, "instance-a"), dagster_home(tmp_path, "instance-b")]

    # both instances at once, on the same lake: two real processes, as two nodes would be
    for process in [start_refresh(home, config) for home in homes]:
        finish(process)
    # each instance: one run of each schema's batches (one range each), then the catalog job
    assert [successful_runs(home) for home in homes] == [
        {"sales_batches_job": 1, "ref_batches_job": 1, "aperio_catalog_job": 1}
    ] * 2

    # complete: every batch of every table is marked with its rows; every raw file has one lineage row
    lake = open_lake(str(config))
    status = open_tracker(lake, "sales")
    months = {r["incremental_key_values"]: r["row_count"] for r in status.status_rows("orders")}
    assert months == {f'{{"month":"{m}","year":"2024"}}': 2 * int(m) + 1 for m in MONTHS}
    assert [r["row_count"] for r in status.status_rows("customers")] == [3]
    assert {r["alternate_name"] for r in open_tracker(lake, "ref").status_rows("regions")} == {"regions"}
    assert len(open_lineage(lake, "sales").records()) == 13 and len(open_lineage(lake, "ref").records()) == 2
    # duplicate-free: each raw file's rows are in the catalog exactly once
    with connect(lake) as con:
        for table, rows in expected_rows.items():
            assert con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == rows, table
        assert (
            con.execute("SELECT count(*) FROM (SELECT DISTINCT id FROM sales.orders)").fetchone()[0]
            == expected_rows["sales.orders"]
        )
        # one current row per key in the shared state, whichever instance wrote it
        assert con.execute(
            "SELECT count(*), count(DISTINCT (schema_name, alternate_name, incremental_key_values)) "
            "FROM aperio.partition_status"
        ).fetchone() == (6 + 1 + 2, 6 + 1 + 2)
        assert con.execute("SELECT count(*) FROM aperio.views").fetchone()[0] == 4

    # a later refresh from either instance finds nothing to do: no batch run, nothing written
    for home in homes:
        assert "aperio: 0 batch run(s) (0 batch(es) registered, 0 removed)" in finish(start_refresh(home, config))
        assert latest_metadata(home, ["aperio", "catalog_views"])["views written"] == 0
        for schema in ("sales", "ref"):
            assert latest_metadata(home, [schema, "generated_model"])["model written"] is False

    # nothing single-node in the bucket, ever
    keys = [info.path for info in storage.list(f"s3://{s3_bucket}", recursive=True)]
    assert keys and not [k for k in keys if k.endswith((".lock", ".duckdb", ".wal", ".duckdb.wal"))]

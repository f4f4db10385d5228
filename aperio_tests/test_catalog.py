"""The DuckDB catalog: table views, the `aperio` state views, view definitions, quoting,
credentials, and both ways DuckDB reads S3."""

from __future__ import annotations

import json
import logging

import pytest

from aperio_assets.catalog import ViewStore, connect, open_catalog
from aperio_assets.conversion.refresh import refresh
from aperio_assets.state import open_tracker
from aperio_tests.helpers import HOSTILE, TEST_CREDENTIALS, LakeCase, build_catalog_lake, put, run_cli


@pytest.mark.parametrize(
    ("lake_case", "s3_access"), [("local", "auto"), ("s3", "auto"), ("s3", "fsspec")], indirect=["lake_case"]
)
def test_views_and_cross_schema_join(lake_case: LakeCase, s3_access: str) -> None:
    lake = build_catalog_lake(lake_case)
    con, report = open_catalog(lake, s3_access=s3_access)
    assert report.broken == {}
    assert report.s3_access == (None if lake_case.kind == "local" else ("httpfs" if s3_access == "auto" else "fsspec"))
    rows = con.execute(
        "SELECT c.name, sum(o.amount) FROM sales.orders o JOIN ref.carriers c USING (carrier) GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert rows == [("American", 40), ("United", 20)]
    assert con.execute("SELECT DISTINCT month FROM sales.orders ORDER BY 1").fetchall() == [
        ("01",),
        ("02",),
    ] or con.execute("SELECT DISTINCT month FROM sales.orders ORDER BY 1").fetchall() == [(1,), (2,)]
    assert con.execute(f'SELECT v FROM sales."{HOSTILE.replace(chr(34), chr(34) * 2)}"').fetchall() == [(42,)]
    schemas = {r for r in con.execute("SELECT database_name, schema_name FROM duckdb_schemas()").fetchall()}
    assert {("aperio_catalog", "sales"), ("aperio_catalog", "ref"), ("aperio_catalog", "aperio")} <= schemas
    # no persistent catalog file in shared mode
    assert not [
        f
        for f in lake.storage.list(lake.config.aperio_directory, recursive=True)
        if f.name.endswith((".duckdb", ".wal"))
    ]


def test_state_views_agree_with_the_trackers(lake_case: LakeCase) -> None:
    lake = build_catalog_lake(lake_case)
    tracker = open_tracker(lake, "sales")
    tracker.invalidate("orders", {"year": "2024", "month": "02"})
    tracker.mark_table_complete("orders-pipeline", "sig")
    for _ in range(2):  # before and after compaction
        con = connect(lake)
        status = con.execute(
            "SELECT schema_name, alternate_name, incremental_key_values, row_count "
            "FROM aperio.partition_status ORDER BY ALL"
        ).fetchall()
        expected = sorted(
            (s, r["alternate_name"], r["incremental_key_values"], r["row_count"])
            for s in ("ref", "sales")
            for alt in {"orders", "orders_csv", HOSTILE, "carriers"}
            for r in open_tracker(lake, s).status_rows(alt)
        )
        assert status == expected and len(status) == 4  # the fixture's orders.csv is table orders_csv
        assert con.execute("SELECT schema_name, pipeline_name FROM aperio.table_completion").fetchall() == [
            ("sales", "orders-pipeline")
        ]
        conversions = con.execute(
            "SELECT schema_name, table_name, row_count FROM aperio.conversions ORDER BY ALL"
        ).fetchall()
        assert conversions == sorted(
            [
                ("ref", "carriers", 2),
                ("sales", HOSTILE, 1),
                ("sales", "orders", 1),
                ("sales", "orders", 2),
                ("sales", "orders_csv", 1),
            ]
        )
        assert con.execute("SELECT count(*) FROM aperio.views WHERE origin = 'generated'").fetchone() == (4,)
        tracker.compact()


def test_user_views_survive_rebuild_and_broken_ones_do_not_break_connect(
    lake_case: LakeCase, caplog: pytest.LogCaptureFixture
) -> None:
    lake = build_catalog_lake(lake_case)
    store = ViewStore(lake)
    store.add("sales", "big_orders", "SELECT * FROM sales.orders WHERE amount >= 20")
    store.add("sales", "joined", "SELECT o.id, c.name FROM sales.orders o JOIN ref.carriers c USING (carrier)")
    store.add("ref", "broken", "SELECT * FROM no_such_table")
    assert store.rebuild().removed == 0
    assert {(v.view_name, v.origin) for v in store.list()} >= {
        ("big_orders", "user"),
        ("joined", "user"),
        ("broken", "user"),
        ("orders", "generated"),
    }
    with caplog.at_level(logging.WARNING):
        con, report = open_catalog(lake)
    assert list(report.broken) == ["ref.broken"] and "no_such_table" in report.broken["ref.broken"].lower()
    assert "ref.broken" in caplog.text
    assert con.execute("SELECT count(*) FROM sales.big_orders").fetchone() == (2,)
    assert con.execute("SELECT count(*) FROM sales.joined").fetchone() == (3,)
    assert store.drop("ref", "broken") and not store.drop("ref", "broken")
    assert open_catalog(lake)[1].broken == {}


@pytest.mark.parametrize("lake_case", ["s3"], indirect=True)
def test_credentials_never_leave_the_secret(lake_case: LakeCase, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        lake = build_catalog_lake(lake_case)
        con = connect(lake)
        con.execute("SELECT count(*) FROM sales.orders").fetchall()
    written = b"".join(
        lake.storage.read_bytes(f.path) for f in lake.storage.list(lake.config.aperio_directory, recursive=True)
    )
    view_sql = " ".join(r[0] for r in con.execute("SELECT sql FROM duckdb_views()").fetchall())
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("aperio"))
    for secret in TEST_CREDENTIALS.values():
        assert secret.encode() not in written
        assert secret not in view_sql and secret not in ours
    # botocore's own DEBUG request logs name the access key id (never the secret); the CLI keeps them off
    assert TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in caplog.text
    # the machine-local catalog cache holds view SQL only: the secret was in memory, never persisted
    from aperio_assets.catalog.connect import cache_directory

    cached = b"".join(p.read_bytes() for p in cache_directory().rglob("*") if p.is_file())
    assert cached and all(secret.encode() not in cached for secret in TEST_CREDENTIALS.values())
    status = run_cli("--config", lake_case.config_path, "status", "--json")
    assert all(secret not in status.stdout for secret in TEST_CREDENTIALS.values())


def test_sql_command(lake_case: LakeCase) -> None:
    build_catalog_lake(lake_case)
    result = run_cli(
        "--config",
        lake_case.config_path,
        "sql",
        "SELECT carrier, sum(amount) AS total FROM sales.orders GROUP BY 1 ORDER BY 1",
        "--format",
        "csv",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["carrier,total", "AA,40", "UA,20"]
    result = run_cli("--config", lake_case.config_path, "sql", "SELECT 1 AS one", "--json")
    assert json.loads(result.stdout) == [{"one": 1}]
    bad = run_cli("--config", lake_case.config_path, "sql", "SELECT * FROM nowhere")
    assert bad.returncode == 2 and bad.stderr.startswith("aperio: error: query failed:")
    assert "Traceback" not in bad.stderr
    views = run_cli("--config", lake_case.config_path, "views", "add", "sales.recent", "SELECT 2 AS two")
    assert views.returncode == 0
    listed = json.loads(run_cli("--config", lake_case.config_path, "views", "list", "--json").stdout)
    assert {"schema": "sales", "view": "recent", "origin": "user", "sql": "SELECT 2 AS two"} in listed


def test_local_mode_state_views_read_the_legacy_files(tmp_path) -> None:
    from aperio_assets.lake import open_lake

    (tmp_path / "lake" / "sales").mkdir(parents=True)
    (tmp_path / "lake" / "sales" / "orders.csv").write_text("id,amount\n1,5\n2,7\n")
    config = tmp_path / "aperio.yaml"
    config.write_text("baseDirectory: lake\nstateStorage: local\n")
    lake = open_lake(str(config))
    refresh(lake)
    open_tracker(lake, "sales").mark_table_complete("p", "s")
    con, report = open_catalog(lake)
    assert report.broken == {} and report.views == 1
    assert con.execute("SELECT sum(amount) FROM sales.orders").fetchone() == (12,)
    assert con.execute("SELECT schema_name, alternate_name, row_count FROM aperio.partition_status").fetchall() == [
        ("sales", "orders", 2)
    ]
    assert con.execute("SELECT pipeline_name FROM aperio.table_completion").fetchall() == [("p",)]
    assert con.execute("SELECT table_name, row_count FROM aperio.conversions").fetchall() == [("orders", 2)]
    # the legacy DuckDB file is not held open by the catalog: the store can still write
    open_tracker(lake, "sales").mark_processed("orders", "orders", {"x": "1"})


def test_views_are_bound_once_per_definitions_version(lake_case: LakeCase) -> None:
    lake = build_catalog_lake(lake_case)
    ViewStore(lake).add("ref", "broken", "SELECT * FROM no_such_table")
    first = open_catalog(lake)[1]
    second = open_catalog(lake)[1]
    assert (first.cache, second.cache) == ("built", "hit")
    assert list(second.broken) == ["ref.broken"]  # still reported when nothing is bound
    # views of the cache bind at query time: data added after the cache was built is there
    put(lake, "sales/orders/year=2024/month=03/a.csv", b"id,carrier,amount\n9,UA,1000\n")
    refresh(lake)
    assert open_catalog(lake)[1].cache == "hit"  # a new partition changes no definition
    assert connect(lake).execute("SELECT sum(amount) FROM sales.orders").fetchone() == (1060,)
    ViewStore(lake).drop("ref", "broken")
    third = open_catalog(lake)[1]
    assert third.cache == "built" and third.broken == {}


def test_a_view_remembered_broken_is_bound_again_once_it_binds(lake_case: LakeCase) -> None:
    """The cache remembers views that did not bind; a connect finds one that binds now (its files
    are back) and binds every view again, while one still broken leaves the cache as it is."""
    lake = build_catalog_lake(lake_case)
    folder = lake.storage.join(lake.storage.aperio_path("sales", "tables"), "orders")
    saved = {i.path: lake.storage.read_bytes(i.path) for i in lake.storage.list(folder, recursive=True)}
    for path in saved:
        lake.storage.delete(path)
    first = open_catalog(lake)[1]
    assert first.cache == "built" and list(first.broken) == ["sales.orders"]
    assert open_catalog(lake)[1].cache == "hit"  # still broken: nothing to bind again
    for path, data in saved.items():
        lake.storage.write_bytes(path, data)
    again = open_catalog(lake)[1]
    assert again.cache == "rebuilt" and again.broken == {}
    assert connect(lake).execute("SELECT count(*) FROM sales.orders").fetchone()[0] > 0
    assert open_catalog(lake)[1].cache == "hit"


def test_an_open_connection_survives_compaction(lake_case: LakeCase) -> None:
    """The state views are snapshots: compaction deleting every file they were read from (no grace
    period at all, an unreadable file present so no glob could serve) never breaks a query."""
    from aperio_assets.state.maintenance import shared_state_tables

    lake = build_catalog_lake(lake_case)
    status_dir = lake.storage.aperio_path("sales", "partition_status")
    lake.storage.write_bytes(lake.storage.join(status_dir, "00000000000000001_bad_000000.parquet"), b"not parquet")
    tracker = open_tracker(lake, "sales")
    tracker.mark_processed("extra", "extra", {"k": "1"})
    con = connect(lake)
    query = "SELECT alternate_name, incremental_key_values FROM aperio.partition_status ORDER BY ALL"
    before = con.execute(query).fetchall()
    assert ("extra", '{"k":"1"}') in before and ("orders", '{"month":"02","year":"2024"}') in before
    views_before = con.execute("SELECT count(*) FROM aperio.views").fetchone()
    for entry in shared_state_tables(lake):
        entry.table.grace_seconds = 0
        entry.table.compact()
    assert con.execute(query).fetchall() == before
    assert con.execute("SELECT count(*) FROM aperio.views").fetchone() == views_before
    assert connect(lake).execute(query).fetchall() == before  # a new connection reads the same


def test_each_connection_keeps_its_own_state_snapshot(lake_case: LakeCase) -> None:
    """Connects in one process may share a DuckDB database (the cache file kept open): each
    connection still has the snapshot taken at its connect."""
    lake = build_catalog_lake(lake_case)
    query = "SELECT count(*) FROM aperio.partition_status WHERE alternate_name = 'extra'"
    before = connect(lake)
    assert before.execute(query).fetchone() == (0,)
    open_tracker(lake, "sales").mark_processed("extra", "extra", {"k": "1"})
    after = connect(lake)
    assert after.execute(query).fetchone() == (1,)
    assert before.execute(query).fetchone() == (0,)
    before.close()
    assert after.execute(query).fetchone() == (1,) and after.execute("SELECT count(*) FROM sales.orders").fetchone()


def test_views_rebuild_reports_its_summary_as_json(lake_case: LakeCase) -> None:
    """`aperio views rebuild --json`: the CLI's shape of the library's RebuildSummary."""
    lake = build_catalog_lake(lake_case)  # the refresh wrote the generated views
    generated = {(v.schema_name, v.view_name) for v in ViewStore(lake).list() if v.origin == "generated"}
    assert ("sales", "orders") in generated and len(generated) >= 3
    ViewStore(lake).add("sales", "orders", "SELECT 1 AS one")  # a user's view shadows a generated one
    result = run_cli("--config", lake_case.config_path, "views", "rebuild", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "written": 0,
        "removed": 0,
        "unchanged": len(generated) - 1,
        "shadowedByUserViews": 1,
        "views": len(generated),
    }

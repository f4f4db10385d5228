"""`aperio refresh`: conversion, lineage, partition processing and the generated model, on local
disk and on the loopback S3 server."""

from __future__ import annotations

import io
import json

import polars as pl
import pytest

from aperio_assets.conversion.refresh import refresh
from aperio_assets.lake import Lake
from aperio_assets.state import open_lineage, open_tracker
from aperio_tests.helpers import LakeCase, parquet_bytes, put, run_cli, run_in_processes, seed


def read_output(lake: Lake, path: str) -> pl.DataFrame:
    return pl.read_parquet(io.BytesIO(lake.storage.read_bytes(path)))


def test_every_format_and_the_generated_model(lake_case: LakeCase) -> None:
    lake = lake_case.lake()
    seed(lake)
    (result,) = refresh(lake)
    assert result.count("files", "failed") == 0
    # 10 raw files; the fixture's sales/orders.csv clashes with the orders/ folder: table orders_csv
    assert (result.count("files", "converted"), result.count("batches", "processed")) == (10, 9)
    tables = lake.storage.aperio_path("sales", "tables")
    j = lake.storage.join
    customers = read_output(lake, j(tables, "customers", "customers.csv.parquet"))
    assert customers.rows() == [(1, "Ann", None), (2, "Bob", None), (3, "Lee, Jr", 7)]
    assert read_output(lake, j(tables, "regions", "regions.tsv.parquet")).rows() == [("N", "North"), ("S", "South")]
    assert read_output(lake, j(tables, "products", "products.json.parquet")).rows() == [("a", 1.5), ("b", None)]
    assert read_output(lake, j(tables, "events", "events.jsonl.parquet"))["e"].to_list() == [1, 2, 3]
    assert read_output(lake, j(tables, "staff", "staff.xlsx.parquet")).rows() == [("x", 30), ("y", 40)]
    feb = j(tables, "orders", "year=2024", "month=02")
    assert read_output(lake, j(feb, "part-0.csv.parquet"))["amount"].to_list() == [0, 10, 20]
    assert read_output(lake, j(feb, "part-1.jsonl.parquet"))["amount"].to_list() == [90]
    assert not lake.storage.exists(j(tables, "rates", "rates.parquet"))  # Parquet is read in place

    tracker = open_tracker(lake, "sales")
    assert tracker.get_processed_key_values("orders") == [
        {"month": "01", "year": "2024"},
        {"month": "02", "year": "2024"},
    ]
    statuses = {r["incremental_key_values"]: r for r in tracker.status_rows("orders")}
    feb_status = statuses['{"month":"02","year":"2024"}']
    assert feb_status["row_count"] == 4 and feb_status["target_pattern"] == j(feb, "*.parquet")
    assert tracker.status_rows("rates")[0]["target_pattern"].endswith("sales/rates.parquet")

    lineage = open_lineage(lake, "sales").records()
    assert len(lineage) == 10
    row = lineage[j(lake.config.base_directory, "sales", "customers.csv")]
    assert (row["conversion_type"], row["row_count"], row["table_name"], row["error"]) == (
        "csv->parquet",
        3,
        "customers",
        None,
    )
    assert row["source_size"] > 0 and row["source_modified"] > 0
    assert (row["source_etag"] is not None) is (lake_case.kind == "s3")

    model = json.loads(lake.storage.read_bytes(lake.storage.aperio_path("sales", "generated-model.json")))
    by_name = {t["name"]: t for t in model["tables"]}
    assert sorted(by_name) == ["customers", "events", "orders", "orders_csv", "products", "rates", "regions", "staff"]
    assert by_name["orders"]["partitionColumns"] == ["year", "month"]
    assert by_name["orders"]["sourceFormats"] == ["csv", "jsonl"] and by_name["orders"]["rowCount"] == 6
    assert by_name["customers"]["columns"] == [
        {"name": "id", "type": "Int64"},
        {"name": "name", "type": "String"},
        {"name": "score", "type": "Int64"},
    ]
    assert by_name["rates"]["rowCount"] == 4 and by_name["rates"]["parquetInPlace"]


def test_incremental(lake_case: LakeCase) -> None:
    lake = lake_case.lake()
    seed(lake)
    refresh(lake)
    (again,) = refresh(lake)
    assert again.count("files", "converted") == 0 and again.count("batches", "processed") == 0
    assert again.model_written is False

    # change one file in one partition: only that file and that partition
    put(lake, "sales/orders/year=2024/month=01/part-0.csv", b"id,amount\n1,11\n2,22\n3,33\n")
    (changed,) = refresh(lake)
    assert [(f.table, f.source.rsplit("/", 3)[-3:]) for f in changed.files if f.status == "converted"] == [
        ("orders", ["year=2024", "month=01", "part-0.csv"])
    ]
    assert [(b.table, b.batch) for b in changed.batches if b.status == "processed"] == [
        ("orders", '{"month":"01","year":"2024"}')
    ]
    tracker = open_tracker(lake, "sales")
    jan = {r["incremental_key_values"]: r["row_count"] for r in tracker.status_rows("orders")}
    assert jan['{"month":"01","year":"2024"}'] == 3

    # a new partition, and a file added to an existing one
    put(lake, "sales/orders/year=2024/month=03/part-0.csv", b"id,amount\n1,1\n")
    put(lake, "sales/orders/year=2024/month=02/part-2.csv", b"id,amount\n5,5\n")
    (added,) = refresh(lake)
    assert sorted(b.batch for b in added.batches if b.status == "processed") == [
        '{"month":"02","year":"2024"}',
        '{"month":"03","year":"2024"}',
    ]
    assert added.count("files", "converted") == 2

    # removing a raw file removes its output and lineage; an emptied partition is no longer processed
    storage = lake.lake_storage
    storage.delete(storage.join(lake.config.base_directory, "sales/orders/year=2024/month=03/part-0.csv"))
    storage.delete(storage.join(lake.config.base_directory, "sales/events.jsonl"))
    (removed,) = refresh(lake)
    assert sorted(f.source.rsplit("/", 1)[-1] for f in removed.files if f.status == "removed") == [
        "events.jsonl",
        "part-0.csv",
    ]
    tables = lake.storage.aperio_path("sales", "tables")
    assert not lake.storage.exists(lake.storage.join(tables, "events", "events.jsonl.parquet"))
    assert not lake.storage.exists(lake.storage.join(tables, "orders", "year=2024", "month=03", "part-0.csv.parquet"))
    assert open_tracker(lake, "sales").get_processed_key_values("events") == []
    assert {"month": "03", "year": "2024"} not in open_tracker(lake, "sales").get_processed_key_values("orders")
    assert not any(p.endswith("events.jsonl") for p in open_lineage(lake, "sales").records())


def test_broken_file_among_good_ones(lake_case: LakeCase) -> None:
    lake = lake_case.lake()
    seed(lake)
    put(lake, "sales/broken.xlsx", b"this is not a spreadsheet")
    put(lake, "sales/orders/year=2024/month=01/bad.json", b'{"not": "an array"}')
    result = run_cli("--config", lake_case.config_path, "refresh")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    failures = [line for line in result.stderr.splitlines() if line.startswith("aperio: failed:")]
    assert len(failures) == 2 and any("broken.xlsx" in f for f in failures) and any("bad.json" in f for f in failures)
    lake = lake_case.lake()
    lineage = open_lineage(lake, "sales").records()
    broken = next(r for p, r in lineage.items() if p.endswith("broken.xlsx"))
    assert broken["error"] and broken["target_path"] is None
    assert next(r for p, r in lineage.items() if p.endswith("customers.csv"))["error"] is None
    statuses = {r["incremental_key_values"]: r for r in open_tracker(lake, "sales").status_rows("orders")}
    jan = statuses['{"month":"01","year":"2024"}']
    assert jan["error_status"] is True and "bad.json" in jan["error_message"] and jan["row_count"] == 2
    assert statuses['{"month":"02","year":"2024"}']["error_status"] is False


def test_hostile_file_names(lake_case: LakeCase) -> None:
    lake = lake_case.lake()
    names = ['quo"te.csv', "semi;colon --.csv", "with space.csv", "ünïcødé.csv", 'x"; DROP SCHEMA y; --.csv']
    for name in names:
        put(lake, f"sales/{name}", b"a\n1\n")
    put(lake, "sales/same.csv", b"a\n1\n")
    put(lake, "sales/same.json", b'[{"a": 1}]')
    (result,) = refresh(lake)
    assert result.count("files", "failed") == 0
    model = json.loads(lake.storage.read_bytes(lake.storage.aperio_path("sales", "generated-model.json")))
    assert sorted(t["name"] for t in model["tables"]) == sorted(
        ['quo"te', "semi;colon --", "with space", "ünïcødé", 'x"; DROP SCHEMA y; --', "orders", "same_csv", "same_json"]
    )
    target = lake.storage.join(
        lake.storage.aperio_path("sales", "tables"), 'x"; DROP SCHEMA y; --', 'x"; DROP SCHEMA y; --.csv.parquet'
    )
    assert read_output(lake, target)["a"].to_list() == [1]


def _refresh_in_process(config_path: str) -> None:
    from aperio_assets.conversion.refresh import refresh as run
    from aperio_assets.lake import open_lake

    run(open_lake(config_path))


@pytest.mark.slow
def test_two_concurrent_refreshes_end_consistent(lake_case: LakeCase) -> None:
    lake = lake_case.lake()
    seed(lake)
    for month in range(3, 13):
        body = "id,amount\n" + "".join(f"{i},{i}\n" for i in range(100))
        put(lake, f"sales/orders/year=2024/month={month:02d}/part-0.csv", body.encode())
    run_in_processes(_refresh_in_process, [(lake_case.config_path,)] * 2)
    lake = lake_case.lake()
    tracker = open_tracker(lake, "sales")
    assert len(tracker.get_processed_key_values("orders")) == 12
    assert sum(r["row_count"] for r in tracker.status_rows("orders")) == 2 + 4 + 10 * 100
    outputs = [f for f in lake.storage.list(lake.storage.aperio_path("sales", "tables/orders"), recursive=True)]
    assert len(outputs) == 13  # one converted file per raw file, whoever converted it
    total = sum(read_output(lake, f.path).height for f in outputs)
    assert total == 2 + 4 + 10 * 100  # no duplicated rows
    (after,) = refresh(lake)
    assert after.count("files", "converted") == 0 and after.count("batches", "processed") == 0


def test_same_stem_in_one_partition_gets_two_outputs(lake_case: LakeCase) -> None:
    lake = lake_case.lake()
    put(lake, "sales/events/day=1/a.csv", b"v\n1\n")
    put(lake, "sales/events/day=1/a.jsonl", b'{"v": 2}\n')
    put(lake, "sales/events/day=1/b.csv", b"v\n3\n")
    (result,) = refresh(lake)
    assert result.count("files", "converted") == 4  # the three above and the fixture's orders.csv
    folder = lake.storage.aperio_path("sales", "tables/events/day=1")
    assert sorted(f.name for f in lake.storage.list(folder)) == ["a.csv.parquet", "a.jsonl.parquet", "b.csv.parquet"]
    (status,) = open_tracker(lake, "sales").status_rows("events")
    assert status["row_count"] == 3


def test_a_refresh_writes_state_once_and_lists_little(lake_case: LakeCase) -> None:
    """State is written in one file per kind (not one per table), and reads do not re-list per table."""
    lake = lake_case.lake()
    for i in range(20):
        put(lake, f"sales/t{i:02d}.csv", f"a\n{i}\n".encode())
    lake.storage.counters.reset()
    (result,) = refresh(lake)
    assert result.count("batches", "processed") == 21  # 20 tables and the fixture's orders.csv
    for table in ("conversions", "partition_status"):
        assert len(lake.storage.list(lake.storage.aperio_path("sales", table))) == 1
    assert lake.storage.counters.snapshot()["LIST"] <= 10


def test_a_failed_file_stays_failed_until_it_converts(lake_case: LakeCase) -> None:
    """An unchanged bad file is tried again on every refresh and keeps failing it (exit 1), rather than
    being skipped and forgotten; once it is fixed it converts."""
    from aperio_assets.cli.app import main as cli_main

    lake = lake_case.lake()
    put(lake, "sales/bad.json", b"{not json")
    for _ in range(2):
        (result,) = refresh(lake)
        assert [f.source.rsplit("/", 1)[-1] for f in result.failed_files] == ["bad.json"]
        assert cli_main(["--config", lake_case.config_path, "refresh"]) == 1
    put(lake, "sales/bad.json", b'[{"a": 1}]')
    (fixed,) = refresh(lake)
    assert fixed.failed_files == [] and fixed.count("files", "converted") == 1
    (status,) = open_tracker(lake, "sales").status_rows("bad")
    assert status["error_status"] is False and status["row_count"] == 1


def test_a_transient_failure_of_an_unchanged_file_is_retried(
    lake_case: LakeCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that failed for a reason outside itself (its upload was rejected) converts on the next
    refresh although its size, mtime and etag did not change."""
    from aperio_assets.errors import StorageError

    lake = lake_case.lake()
    path = put(lake, "sales/late.csv", b"a\n1\n2\n")
    upload = lake.storage.upload

    def rejected(local: str, target: str) -> None:
        if "late.csv" in target:
            raise StorageError("AccessDenied: the bucket policy refused the upload")
        upload(local, target)

    monkeypatch.setattr(lake.storage, "upload", rejected)
    (first,) = refresh(lake)
    assert [(f.source.rsplit("/", 1)[-1], "AccessDenied" in f.error) for f in first.failed_files] == [
        ("late.csv", True)
    ]
    monkeypatch.setattr(lake.storage, "upload", upload)  # the policy is fixed; the file is not touched
    (second,) = refresh(lake)
    assert second.failed_files == []
    assert [f.source.rsplit("/", 1)[-1] for f in second.files if f.status == "converted"] == ["late.csv"]
    (status,) = open_tracker(lake, "sales").status_rows("late")
    assert status["error_status"] is False and status["row_count"] == 2
    assert open_lineage(lake, "sales").records()[path]["error"] is None


def test_parquet_read_in_place_is_inspected_from_its_footer(
    lake_case: LakeCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Raw Parquet is never fetched whole for lineage: one ranged read of its end (two when the
    footer is larger than 64 KiB); a file that is not Parquet fails with the reason."""
    lake = lake_case.lake()
    small = put(lake, "sales/small.parquet", parquet_bytes(pl.DataFrame({"a": range(50_000), "b": ["x"] * 50_000})))
    wide = put(lake, "sales/wide.parquet", parquet_bytes(pl.DataFrame({f"column_{i:04d}": [i] for i in range(1500)})))
    put(lake, "sales/fake.parquet", b"this is not parquet at all, though it is named so")
    storage = lake.lake_storage
    reads: list[tuple[str, int, int]] = []
    whole: list[str] = []
    read_range, read_bytes, download = storage.read_range, storage.read_bytes, storage.download
    monkeypatch.setattr(storage, "read_range", lambda p, s, n: reads.append((p, s, n)) or read_range(p, s, n))
    monkeypatch.setattr(storage, "read_bytes", lambda p: whole.append(p) or read_bytes(p))
    monkeypatch.setattr(storage, "download", lambda p, t: whole.append(p) or download(p, t))
    (result,) = refresh(lake)
    records = open_lineage(lake, "sales").records()
    assert records[small]["row_count"] == 50_000 and records[wide]["row_count"] == 1
    assert len(json.loads(records[wide]["extra"])["columns"]) == 1500
    (failure,) = result.failed_files
    assert failure.source.endswith("fake.parquet") and "magic bytes" in failure.error
    if lake_case.kind == "s3":
        assert not [p for p in whole if p in (small, wide)]
        by_file = {p.rsplit("/", 1)[-1]: [(s, n) for q, s, n in reads if q == p] for p, _, _ in reads}
        assert len(by_file["small.parquet"]) == 1 and by_file["small.parquet"][0][1] <= 64 * 1024
        assert len(by_file["wide.parquet"]) == 2  # the footer of 1,500 columns is larger than 64 KiB
        size = storage.info(wide).size
        assert by_file["wide.parquet"][1][1] < size and by_file["wide.parquet"][1][0] > 0


def _no_op_refresh(lake: Lake) -> tuple[list[str], dict[str, int]]:
    """Refresh ``lake`` once more; the paths it read whole, and its requests by kind."""
    lake.storage.counters.reset()
    gets: list[str] = []
    read_bytes, download = lake.storage.read_bytes, lake.storage.download
    lake.storage.read_bytes = lambda p: gets.append(p) or read_bytes(p)  # type: ignore[method-assign]
    lake.storage.download = lambda p, t: gets.append(p) or download(p, t)  # type: ignore[method-assign]
    try:
        (result,) = refresh(lake)
    finally:
        del lake.storage.read_bytes, lake.storage.download
    assert result.count("files", "converted") == 0 and result.count("batches", "processed") == 0
    return gets, {k: v for k, v in lake.storage.counters.snapshot().items() if v}


def test_a_no_op_refresh_reads_no_raw_or_converted_file(lake_case: LakeCase, tmp_path) -> None:
    """A refresh with nothing to do reads only state: no GET of a raw or converted file, and the
    same number of requests of each kind for a lake of 20 files as for one of 200."""
    counts = []
    for total in (20, 200):
        lake = lake_case.sibling(tmp_path, f"lake{total}")
        for i in range(total):
            put(lake, f"sales/events/day={i:03d}/part.csv", f"v\n{i}\n".encode())
        refresh(lake)
        gets, requests = _no_op_refresh(lake)
        # only state and the model: nothing under tables/, nothing outside .aperio/
        assert [p for p in gets if "/tables/" in p or not p.startswith(lake.config.aperio_directory)] == []
        counts.append(requests)
    assert counts[0] == counts[1]


def test_a_file_with_other_columns_makes_its_view_unite_them_at_once(lake_case: LakeCase) -> None:
    """A view bound from one footer (its files' columns agreed) must not read a file converted since
    with other columns by the first file's: the batches that convert it write that table's
    definition with ``union_by_name`` at once, before any model is written again (DESIGN §7)."""
    from aperio_assets.catalog import ViewStore, connect
    from aperio_assets.conversion.batches import convert_batches, schema_batches, select_batches
    from aperio_assets.conversion.refresh import SchemaRefresh
    from aperio_assets.state.access import open_state

    lake = lake_case.lake()
    for day in ("01", "02"):
        put(lake, f"sales/events/day={day}/a.csv", f"id,v\n{day},x\n".encode())
    refresh(lake)
    model_path = lake.storage.aperio_path("sales", "generated-model.json")
    model_before = lake.storage.read_bytes(model_path)

    def definition() -> str:
        return next(v.sql for v in ViewStore(lake).list() if v.view_name == "events")

    assert "union_by_name" not in definition()
    put(lake, "sales/events/day=03/a.csv", b"id\n3\n")  # without v
    run = SchemaRefresh(lake, lake.schema("sales"))
    conversions = open_state(lake, "sales", "conversions")
    lineage = {r["source_path"]: r for r in conversions.rows()}
    batches, _ = select_batches(run, [key for key in schema_batches(run) if "day=03" in key])
    convert_batches(run, batches, lineage, lambda rows, removed: conversions.apply(rows, [(p,) for p in removed]))
    assert lake.storage.read_bytes(model_path) == model_before  # no model written (as in a batch run)
    assert "union_by_name = true" in definition()
    with connect(lake) as con:
        assert con.execute("SELECT count(*), count(v) FROM sales.events").fetchone() == (3, 2)
    # files that agree again (the next refresh's model) bind from one footer again
    put(lake, "sales/events/day=03/a.csv", b"id,v\n3,z\n")
    refresh(lake)
    assert "union_by_name" not in definition()

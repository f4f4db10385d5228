"""The state-table protocol of DESIGN §5, on local disk and on the loopback S3 server."""

from __future__ import annotations

import logging

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aperio_assets.state.clock import HybridClock, wall_clock_us
from aperio_assets.state.spec import TableSpec
from aperio_assets.state.sql import current_state_sql
from aperio_assets.state.table import COMPACTED_SUFFIX, StateTable, parquet_bytes
from aperio_tests.helpers import StorageCase

SPEC = TableSpec("things", keys=("group", "name"), values=(("value", pa.int64()), ("note", pa.string())))


def make(case: StorageCase, provider=None, **kwargs) -> StateTable:
    """A table on the case's storage; compacted files go at once unless a test sets a grace period."""
    provider = provider or case.provider
    kwargs.setdefault("grace_seconds", 0)
    return StateTable(provider, provider.join(case.root, "state", "things"), SPEC, **kwargs)


def files(case: StorageCase) -> list[str]:
    return [e.name for e in case.provider.list(case.provider.join(case.root, "state", "things"))]


def live(table: StateTable) -> dict[tuple[str, str], int]:
    return {(r["group"], r["name"]): r["value"] for r in table.rows()}


def test_a_batch_is_one_file_and_one_put_with_no_list(storage_case: StorageCase) -> None:
    t = make(storage_case)
    storage_case.provider.counters.reset()
    name = t.write(upserts=[{"group": "g", "name": str(i), "value": i} for i in range(10_000)])
    counts = storage_case.provider.counters.snapshot()
    assert counts == {"PUT": 1, "GET": 0, "LIST": 0, "DELETE": 0, "HEAD": 0}
    assert files(storage_case) == [name]
    assert len(make(storage_case, storage_case.new_provider()).rows()) == 10_000


def test_names_are_unique_and_sort_by_time(storage_case: StorageCase) -> None:
    t = make(storage_case)
    names = [t.upsert({"group": "g", "name": "k", "value": i}) for i in range(5)]
    assert names == sorted(names) and len(set(names)) == 5
    assert files(storage_case) == names
    assert live(make(storage_case, storage_case.new_provider())) == {("g", "k"): 4}


def test_refresh_is_one_list_plus_a_get_per_new_file(storage_case: StorageCase) -> None:
    writer, reader_provider = make(storage_case), storage_case.new_provider()
    reader = make(storage_case, reader_provider)
    for i in range(3):
        writer.upsert({"group": "g", "name": str(i), "value": i})
    reader_provider.counters.reset()
    assert len(reader.rows()) == 3
    assert reader_provider.counters.snapshot() == {"PUT": 0, "GET": 3, "LIST": 1, "DELETE": 0, "HEAD": 0}
    writer.upsert({"group": "g", "name": "new", "value": 9})
    reader_provider.counters.reset()
    assert reader.get(("g", "new"))["value"] == 9
    assert reader.get(("g", "0"))["value"] == 0
    assert reader_provider.counters.snapshot() == {"PUT": 0, "GET": 1, "LIST": 2, "DELETE": 0, "HEAD": 0}


def test_last_writer_wins_and_tombstones(storage_case: StorageCase) -> None:
    a = make(storage_case, writer="writer-a")
    a.write(upserts=[{"group": "g", "name": "x", "value": 1}, {"group": "g", "name": "y", "value": 1}])
    b = make(storage_case, storage_case.new_provider(), writer="writer-b")
    assert live(b) == {("g", "x"): 1, ("g", "y"): 1}
    b.write(upserts=[{"group": "g", "name": "x", "value": 2}], deletes=[("g", "y")])
    assert live(a) == {("g", "x"): 2}
    assert a.get(("g", "y")) is None
    assert a.get(("g", "y"), include_deleted=True)["_deleted"] is True
    # within one batch the last row for a key wins
    a.write(upserts=[{"group": "g", "name": "z", "value": 1}, {"group": "g", "name": "z", "value": 7}])
    assert b.get(("g", "z"))["value"] == 7


def test_a_later_update_wins_despite_clock_skew(storage_case: StorageCase) -> None:
    """A writer whose clock is 10 minutes behind updates a key after reading another writer's newer
    value: the hybrid clock orders its update after what it read."""
    ahead = make(storage_case, writer="ahead")
    behind = make(
        storage_case,
        storage_case.new_provider(),
        writer="behind",
        clock=HybridClock(lambda: wall_clock_us() - 600 * 1_000_000),
    )
    ahead.upsert({"group": "g", "name": "k", "value": 1})
    assert behind.get(("g", "k"))["value"] == 1  # it reads the newer value ...
    behind.upsert({"group": "g", "name": "k", "value": 2})  # ... then updates it
    fresh = make(storage_case, storage_case.new_provider())
    assert fresh.get(("g", "k"))["value"] == 2
    assert fresh.get(("g", "k"))["_writer"] == "behind"


def test_compaction_keeps_versions_and_deletes_exactly_what_it_read(storage_case: StorageCase) -> None:
    a = make(storage_case, writer="a")
    a.write(upserts=[{"group": "g", "name": str(i), "value": i} for i in range(3)])
    a.write(upserts=[{"group": "g", "name": "0", "value": 100}], deletes=[("g", "2")])
    before = {
        (r["group"], r["name"]): (r["_ts"], r["_writer"], r["_deleted"])
        for r in a.to_arrow(include_deleted=True).to_pylist()
    }

    # another writer adds a file while the compaction runs (between its read and its deletes)
    b = make(storage_case, storage_case.new_provider(), writer="b")
    provider = storage_case.provider
    original_create = provider.create_if_absent

    def create_then_race(path, data):
        created = original_create(path, data)
        if path.endswith(COMPACTED_SUFFIX):
            b.upsert({"group": "g", "name": "late", "value": 5})
        return created

    provider.create_if_absent = create_then_race
    try:
        result = a.compact()
    finally:
        provider.create_if_absent = original_create
    assert (result.files_read, result.files_deleted, result.rows_written) == (2, 2, 3)
    remaining = files(storage_case)
    assert len(remaining) == 2 and result.output in remaining  # the late file survived
    fresh = make(storage_case, storage_case.new_provider())
    assert live(fresh) == {("g", "0"): 100, ("g", "1"): 1, ("g", "late"): 5}
    after = {
        (r["group"], r["name"]): (r["_ts"], r["_writer"], r["_deleted"])
        for r in fresh.to_arrow(include_deleted=True).to_pylist()
        if r["name"] != "late"
    }
    assert after == before  # original _ts and _writer kept, young tombstone kept


def test_old_tombstones_go_only_once_they_are_alone(storage_case: StorageCase) -> None:
    t = make(storage_case, tombstone_retention_seconds=0)
    t.upsert({"group": "g", "name": "gone", "value": 1})
    t.upsert({"group": "g", "name": "kept", "value": 1})
    t.delete(("g", "gone"))
    first = t.compact()
    # the tombstone still shadows an older row among the inputs: kept, so that a compaction killed
    # between its deletes could never bring the row back
    assert first.tombstones_dropped == 0
    assert t.get(("g", "gone"), include_deleted=True)["_deleted"]
    second = t.compact()
    assert second.tombstones_dropped == 1 and second.rows_written == 1
    assert make(storage_case, storage_case.new_provider()).to_arrow(include_deleted=True).num_rows == 1


def test_reader_lists_again_when_a_file_vanishes(storage_case: StorageCase) -> None:
    writer = make(storage_case)
    for i in range(4):
        writer.upsert({"group": "g", "name": str(i), "value": i})
    reader_provider = storage_case.new_provider()
    reader = make(storage_case, reader_provider)
    original_read = reader_provider.read_bytes
    compacted = []

    def compact_before_first_get(path):
        if not compacted:  # the reader has listed; the files go away before it reads them
            compacted.append(make(storage_case, storage_case.new_provider()).compact())
        return original_read(path)

    reader_provider.read_bytes = compact_before_first_get
    assert live(reader) == {("g", str(i)): i for i in range(4)}
    assert compacted[0].files_deleted == 4
    assert reader_provider.counters.snapshot()["LIST"] == 2


def test_writers_compact_opportunistically(storage_case: StorageCase) -> None:
    t = make(storage_case, max_small_files=5)
    for i in range(12):
        t.upsert({"group": "g", "name": str(i), "value": i})
    names = files(storage_case)
    assert len(names) <= 6 and any(n.endswith(COMPACTED_SUFFIX) for n in names)
    assert live(make(storage_case, storage_case.new_provider())) == {("g", str(i)): i for i in range(12)}


def test_corrupt_and_foreign_files_are_skipped_and_reported(
    storage_case: StorageCase, caplog: pytest.LogCaptureFixture
) -> None:
    t = make(storage_case)
    t.upsert({"group": "g", "name": "ok", "value": 1})
    p = storage_case.provider
    directory = p.join(storage_case.root, "state", "things")
    p.write_bytes(p.join(directory, "00000000000000001_x_000000.parquet"), b"not parquet at all")
    p.write_bytes(
        p.join(directory, "00000000000000002_x_000000.parquet"), parquet_bytes(pa.table({"group": ["g"], "value": [1]}))
    )
    p.write_bytes(p.join(directory, "notes.txt"), b"hello")
    reader = make(storage_case, storage_case.new_provider())
    with caplog.at_level(logging.WARNING):
        assert live(reader) == {("g", "ok"): 1}
    assert sorted(reader.bad_files) == [
        "00000000000000001_x_000000.parquet",
        "00000000000000002_x_000000.parquet",
        "notes.txt",
    ]
    assert "00000000000000001_x_000000.parquet" in caplog.text and "not a valid Parquet file" in caplog.text
    assert (
        "missing required column(s) name, _ts, _writer, _deleted"
        in reader.bad_files["00000000000000002_x_000000.parquet"]
    )
    # compaction never deletes what it could not read
    reader.compact()
    assert "notes.txt" in files(storage_case) and "00000000000000001_x_000000.parquet" in files(storage_case)
    assert reader.stats().bad_files.keys() == reader.bad_files.keys()


def test_extra_columns_from_newer_writers_survive_compaction(storage_case: StorageCase) -> None:
    p = storage_case.provider
    t = make(storage_case)
    t.upsert({"group": "g", "name": "a", "value": 1})
    newer = pa.table(
        {
            "group": ["g"],
            "name": ["b"],
            "value": [2],
            "note": [None],
            "future": ["kept"],
            "_ts": [wall_clock_us()],
            "_writer": ["future-writer"],
            "_deleted": [False],
        }
    )
    p.write_bytes(
        p.join(storage_case.root, "state", "things", "99999999999999999_f_000000.parquet"), parquet_bytes(newer)
    )
    t.compact()
    (output,) = files(storage_case)
    table = pq.read_table(pa.BufferReader(p.read_bytes(p.join(storage_case.root, "state", "things", output))))
    assert {r["name"]: r.get("future") for r in table.to_pylist()} == {"a": None, "b": "kept"}


def test_sql_rule_matches_the_reader(tmp_path) -> None:
    from aperio_assets.storage import LocalStorage

    case = StorageCase("local", str(tmp_path), LocalStorage())
    a, b = make(case, writer="a"), make(case, writer="b")
    a.write(upserts=[{"group": "g", "name": str(i), "value": i} for i in range(20)])
    b.write(upserts=[{"group": "g", "name": str(i), "value": -i} for i in range(0, 20, 2)], deletes=[("g", "3")])
    a.write(upserts=[{"group": "h", "name": "0", "value": 5}])
    glob = str(tmp_path / "state" / "things" / "*.parquet")
    via_sql = duckdb.sql(current_state_sql(SPEC, glob)).arrow().read_all().to_pylist()
    expected = a.rows()
    key = lambda r: (r["group"], r["name"])  # noqa: E731
    assert sorted((key(r), r["value"]) for r in via_sql) == sorted((key(r), r["value"]) for r in expected)
    assert len(via_sql) == 20


def _duckdb_for(case: StorageCase) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that reads the case's storage (httpfs on the loopback S3)."""
    con = duckdb.connect()
    if case.kind == "s3":
        from aperio_assets.catalog.s3access import enable_s3

        enable_s3(con, case.provider)
    return con


def test_compaction_keeps_its_inputs_for_the_grace_period(storage_case: StorageCase) -> None:
    """A query that took its file list before a compaction still reads every file afterwards; fresh
    readers skip the superseded files; they are deleted once the grace period is over."""
    writer = make(storage_case, writer="w", grace_seconds=3600)
    for i in range(3):
        writer.upsert({"group": "g", "name": str(i), "value": i})
    lister = make(storage_case, storage_case.new_provider())
    lister.refresh()
    snapshot = lister.readable_files()
    assert len(snapshot) == 3

    result = writer.compact()
    assert (result.files_read, result.files_deleted, result.files_kept) == (3, 0, 3)
    assert sorted(files(storage_case)) == sorted([*(s.rsplit("/", 1)[1] for s in snapshot), result.output])
    expected = {("g", str(i)): i for i in range(3)}
    rows = _duckdb_for(storage_case).sql(current_state_sql(SPEC, snapshot)).fetchall()
    assert {(r[0], r[1]): r[2] for r in rows} == expected  # the listed inputs are all still there
    glob = storage_case.provider.join(storage_case.root, "state", "things", "*.parquet")
    rows = _duckdb_for(storage_case).sql(current_state_sql(SPEC, glob)).fetchall()
    assert {(r[0], r[1]): r[2] for r in rows} == expected  # superseded copies change nothing

    reader_provider = storage_case.new_provider()
    reader = make(storage_case, reader_provider, grace_seconds=3600)
    assert live(reader) == expected
    assert reader_provider.counters.snapshot()["GET"] == 1  # the compacted file only
    stats = reader.stats()
    assert (stats.files, stats.small_files, stats.superseded_files) == (1, 0, 3)
    assert reader.readable_files() == [storage_case.provider.join(storage_case.root, "state", "things", result.output)]

    later = make(storage_case, storage_case.new_provider(), grace_seconds=0)  # the grace period is over
    vacuum = later.compact()
    assert (vacuum.files_read, vacuum.files_deleted, vacuum.files_kept, vacuum.output) == (1, 3, 0, None)
    assert files(storage_case) == [result.output]
    assert live(reader) == expected


def test_a_vacuum_killed_midway_brings_nothing_back(storage_case: StorageCase) -> None:
    """A (upsert k) and B (delete k) are compacted into C, which keeps the tombstone; C alone is later
    compacted into D, where the tombstone, old and alone, is dropped. If a vacuum then deletes C but
    dies before A, A must not bring k back: D names every superseded file still listed, A included."""
    t = make(storage_case, writer="w", grace_seconds=3600, tombstone_retention_seconds=0)
    t.upsert({"group": "g", "name": "k", "value": 1})
    t.upsert({"group": "g", "name": "other", "value": 2})
    t.delete(("g", "k"))
    first = t.compact()
    second = t.compact()
    assert second.tombstones_dropped == 1
    storage_case.provider.delete(storage_case.provider.join(storage_case.root, "state", "things", first.output))
    assert live(make(storage_case, storage_case.new_provider())) == {("g", "other"): 2}

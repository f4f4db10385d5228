"""The catalog's parts, each alone: the fingerprint, view binding, the cache files, the state
readers kept between connects, and the local-mode (legacy) snapshot."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import duckdb
import polars as pl
import pytest

from aperio_assets.catalog import fingerprint
from aperio_assets.catalog.binding import bind_error, bind_views, first_line, readers_of
from aperio_assets.catalog.cache import COLLECT_AFTER_SECONDS, MANIFEST, TABLES_CATALOG, CacheFiles
from aperio_assets.catalog.fingerprint import catalog_fingerprint, definition_digest, view_key
from aperio_assets.catalog.snapshot import SNAPSHOT_NAME, StateReaders, pack
from aperio_assets.catalog.views import ViewDefinition, table_scan_sql, views_table

# -- fingerprint -----------------------------------------------------------------------------------

BASE = ViewDefinition("sales", "orders", "SELECT 1 AS a", "generated", (("a", "INTEGER"),))


@pytest.mark.parametrize(
    "changed",
    [
        replace(BASE, schema_name="ref"),
        replace(BASE, view_name="orders2"),
        replace(BASE, sql="SELECT 2 AS a"),
        replace(BASE, origin="user"),
        replace(BASE, columns=(("a", "BIGINT"),)),
        replace(BASE, columns=()),
    ],
)
def test_a_definition_digest_changes_with_every_field(changed: ViewDefinition) -> None:
    assert definition_digest(changed) != definition_digest(BASE)


def test_the_fingerprint_changes_exactly_when_a_definition_or_the_schemas_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    views = [BASE, ViewDefinition("sales", "items", "SELECT 3 AS b", "user")]
    digests = [definition_digest(v) for v in views]
    same = [definition_digest(ViewDefinition(**vars(v))) for v in views]  # equal, not the same objects
    assert catalog_fingerprint(["ref", "sales"], digests) == catalog_fingerprint(["ref", "sales"], same)
    assert catalog_fingerprint(["ref", "sales"], digests) != catalog_fingerprint(["sales"], digests)
    edited = [digests[0], definition_digest(replace(views[1], sql="SELECT 4 AS b"))]
    assert catalog_fingerprint(["ref", "sales"], digests) != catalog_fingerprint(["ref", "sales"], edited)
    assert catalog_fingerprint(["ref", "sales"], digests) != catalog_fingerprint(["ref", "sales"], digests[:1])
    before = catalog_fingerprint(["sales"], digests)
    monkeypatch.setattr(fingerprint.duckdb, "__version__", "0.0.0")  # another storage format
    assert catalog_fingerprint(["sales"], digests) != before


def test_definitions_select_the_configured_schemas_once() -> None:
    from aperio_assets.catalog.fingerprint import Definitions

    views = [ViewDefinition("sales", "b", "SELECT 1", "user"), BASE, ViewDefinition("gone", "x", "SELECT 2", "user")]
    definitions = Definitions(views)
    assert [view_key(v) for v in definitions.views] == ["gone.x", "sales.b", "sales.orders"]  # sorted
    selection = definitions.select(["ref", "sales"])
    assert [view_key(v) for v in selection.views] == ["sales.b", "sales.orders"]
    assert selection.unconfigured == ["gone.x"]
    assert selection.digests == [definition_digest(v) for v in selection.views]
    assert selection.fingerprint == catalog_fingerprint(["ref", "sales"], selection.digests)
    assert definitions.select(["ref", "sales"]) is selection


# -- binding ---------------------------------------------------------------------------------------


def _parquet(path: Path, columns: dict[str, list[object]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(columns).write_parquet(path)
    return str(path)


def test_bind_views_orders_user_views_and_reports_the_broken(tmp_path: Path) -> None:
    orders = _parquet(tmp_path / "orders" / "a.parquet", {"id": [1, 2], "amount": [10, 20]})
    views = [
        ViewDefinition("s", "orders", table_scan_sql([orders]), "generated"),
        ViewDefinition("s", "gone", table_scan_sql([str(tmp_path / "gone" / "*.parquet")]), "generated"),
        # user views reading each other, listed before what they read
        ViewDefinition("s", "top", "SELECT * FROM s.big WHERE amount > 15", "user"),
        ViewDefinition("s", "big", "SELECT * FROM s.orders WHERE amount >= 10", "user"),
        ViewDefinition("s", "bad", "SELECT * FROM s.nowhere", "user"),
    ]
    con = duckdb.connect()
    con.execute("CREATE SCHEMA s")
    broken = bind_views(con, views, workers=4)
    assert sorted(broken) == ["s.bad", "s.gone"]
    assert "nowhere" in broken["s.bad"].lower() and "\n" not in broken["s.bad"]
    assert con.execute("SELECT id FROM s.top").fetchall() == [(2,)]
    assert bind_error(con, views[0]) is None and "nowhere" in (bind_error(con, views[4]) or "").lower()
    # bind_error leaves nothing behind
    assert con.execute("SELECT count(*) FROM duckdb_views() WHERE temporary AND NOT internal").fetchone() == (0,)


def test_first_line() -> None:
    assert first_line(ValueError("one\ntwo")) == "one"
    assert first_line(ValueError("  ")) == "ValueError"


def test_readers_of_finds_user_views_reading_a_view_directly_or_through_others() -> None:
    views = [
        ViewDefinition("s", "Orders", "SELECT 1", "generated"),
        ViewDefinition("s", 'we"ird', "SELECT 1", "generated"),
        ViewDefinition("s", "direct", "select * from S.ORDERS", "user"),  # identifiers are case-insensitive
        ViewDefinition("s", "second", "SELECT * FROM s.direct", "user"),
        ViewDefinition("s", "third", "SELECT * FROM s.second", "migrated"),
        ViewDefinition("s", "quoted", 'SELECT * FROM s."we""ird"', "user"),
        ViewDefinition("s", "other", "SELECT 2", "user"),
        ViewDefinition("s", "orders_gen", "SELECT * FROM s.orders", "generated"),  # generated: files only
    ]
    assert readers_of(views, ["Orders"]) == {"s.direct", "s.second", "s.third"}
    assert readers_of(views, ['we"ird']) == {"s.quoted"}
    assert readers_of(views, ["second"]) == {"s.third"}
    assert readers_of(views, []) == set()


# -- cache files -----------------------------------------------------------------------------------


class _Lake:
    """Files and definitions for the cache tests: views t0..t{n-1}, each over its own Parquet file."""

    def __init__(self, root: Path, n: int) -> None:
        self.root = root
        self.views = [self.view(i) for i in range(n)]

    def view(self, i: int, value: int = 1) -> ViewDefinition:
        path = _parquet(self.root / f"t{i}-{value}" / "a.parquet", {"id": [i], "value": [value]})
        return ViewDefinition("s", f"t{i}", table_scan_sql([path]), "generated")

    def build(self, files: CacheFiles, base, schemas=("s",)):
        digests = [definition_digest(v) for v in self.views]
        return files.build(
            catalog_fingerprint(list(schemas), digests),
            "lake",
            list(schemas),
            self.views,
            digests,
            base=base,
            prepare=lambda con: con.register(SNAPSHOT_NAME, pack({})),
            workers=2,
        )


def _query(database: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(database), read_only=True) as con:
        con.register(SNAPSHOT_NAME, pack({}))
        return con.execute(sql).fetchall()


def test_a_build_from_a_base_binds_only_what_changed_and_their_readers(tmp_path: Path) -> None:
    lake = _Lake(tmp_path / "files", 5)
    files = CacheFiles(tmp_path / "cache")
    first = lake.build(files, None)
    assert first.base is None and first.bound == [f"s.t{i}" for i in range(5)] and first.entry.broken == {}
    assert files.latest("lake") == first.entry == files.entry(first.entry.fingerprint)
    # one definition changed, one removed, one user view over the changed one, one over an unchanged one
    lake.views[2] = lake.view(2, value=7)
    del lake.views[4]
    lake.views += [
        ViewDefinition("s", "over_t2", "SELECT value FROM s.t2", "user"),
        ViewDefinition("s", "over_t0", "SELECT value FROM s.t0", "user"),
    ]
    second = lake.build(files, files.latest("lake"))
    assert second.base == first.entry.fingerprint
    assert second.bound == ["s.over_t0", "s.over_t2", "s.t2"]  # new, changed; t0, t1, t3 came with the copy
    database = second.entry.database
    assert _query(database, "SELECT value FROM s.over_t2") == [(7,)]
    assert _query(database, "SELECT value FROM s.t0") == [(1,)]
    names = {r[0] for r in _query(database, "SELECT view_name FROM duckdb_views() WHERE schema_name = 's'")}
    assert names == {"t0", "t1", "t2", "t3", "over_t2", "over_t0"}  # t4 dropped
    assert {r[0] for r in _query(database, "SELECT view_name FROM duckdb_views() WHERE schema_name = 'aperio'")} == {
        "partition_status",
        "table_completion",
        "conversions",
        "views",
    }
    assert database.parent.name != first.entry.database.parent.name  # a build never rewrites another
    # t0 changes: its user reader is bound with it, the other user view is not
    lake.views[0] = lake.view(0, value=5)
    third = lake.build(files, files.latest("lake"))
    assert third.bound == ["s.over_t0", "s.t0"]
    assert _query(third.entry.database, "SELECT value FROM s.over_t0") == [(5,)]


def test_a_changed_view_that_no_longer_binds_is_gone_not_stale(tmp_path: Path) -> None:
    lake = _Lake(tmp_path / "files", 2)
    files = CacheFiles(tmp_path / "cache")
    lake.build(files, None)
    lake.views[1] = ViewDefinition("s", "t1", table_scan_sql([str(tmp_path / "missing" / "*.parquet")]), "generated")
    second = lake.build(files, files.latest("lake"))
    assert list(second.entry.broken) == ["s.t1"] and second.bound == ["s.t1"]
    names = {r[0] for r in _query(second.entry.database, "SELECT view_name FROM duckdb_views() WHERE schema_name='s'")}
    assert names == {"t0"}


def test_a_removed_schema_goes_with_its_views(tmp_path: Path) -> None:
    lake = _Lake(tmp_path / "files", 1)
    lake.views.append(ViewDefinition("r", "x", "SELECT 1 AS one", "user"))
    files = CacheFiles(tmp_path / "cache")
    lake.build(files, None, schemas=("r", "s"))
    lake.views.pop()
    second = lake.build(files, files.latest("lake"), schemas=("s",))
    assert second.bound == []
    schemas = {r[0] for r in _query(second.entry.database, "SELECT schema_name FROM duckdb_schemas()")}
    assert "r" not in schemas and {"s", "aperio"} <= schemas


def test_a_rebuild_binds_the_remembered_broken_views_and_collects_the_old_build(tmp_path: Path) -> None:
    lake = _Lake(tmp_path / "files", 3)
    later = tmp_path / "later" / "a.parquet"
    lake.views[1] = ViewDefinition("s", "t1", table_scan_sql([str(later)]), "generated")
    files = CacheFiles(tmp_path / "cache")
    first = lake.build(files, None)
    assert list(first.entry.broken) == ["s.t1"]
    _parquet(later, {"id": [9]})
    again = lake.build(files, first.entry)  # the same fingerprint, from its own build
    assert again.entry.fingerprint == first.entry.fingerprint and again.bound == ["s.t1"]
    assert again.entry.broken == {} and _query(again.entry.database, "SELECT id FROM s.t1") == [(9,)]
    assert files.entry(first.entry.fingerprint) == again.entry
    # The superseded build stays while it is young: a process that built the same fingerprint at
    # the same time (and writes its manifest last) or read the old manifest a moment ago opens it.
    assert first.entry.database.exists()
    assert _query(first.entry.database, "SELECT count(*) FROM s.t0") == [(1,)]
    _age(first.entry.database.parent)
    third = lake.build(files, again.entry)
    assert not first.entry.database.exists()  # collected once old enough
    builds = {p.name for p in (tmp_path / "cache" / first.entry.fingerprint).iterdir() if p.is_dir()}
    assert builds == {again.entry.database.parent.name, third.entry.database.parent.name}


def _age(path: Path, seconds: float = COLLECT_AFTER_SECONDS + 60) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_fingerprints_no_lake_names_are_collected_once_old(tmp_path: Path) -> None:
    lake = _Lake(tmp_path / "files", 2)
    files = CacheFiles(tmp_path / "cache")
    first = lake.build(files, None)
    lake.views[0] = lake.view(0, value=3)
    second = lake.build(files, files.latest("lake"))
    old = tmp_path / "cache" / first.entry.fingerprint
    assert old.exists() and files.latest("lake") == second.entry  # young: kept
    _age(old / MANIFEST)
    lake.views[1] = lake.view(1, value=4)
    third = lake.build(files, files.latest("lake"))
    assert not old.exists()  # no lake names it, and it is old
    assert (tmp_path / "cache" / second.entry.fingerprint).exists()  # young
    assert _query(third.entry.database, "SELECT value FROM s.t0 UNION ALL SELECT value FROM s.t1") == [(3,), (4,)]


def test_a_base_that_is_gone_means_binding_everything(tmp_path: Path) -> None:
    lake = _Lake(tmp_path / "files", 2)
    files = CacheFiles(tmp_path / "cache")
    first = lake.build(files, None)
    first.entry.database.unlink()
    lake.views[0] = lake.view(0, value=3)
    second = lake.build(files, first.entry)
    assert second.base is None and second.bound == ["s.t0", "s.t1"]


def test_an_unreadable_or_incompatible_manifest_is_no_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lake = _Lake(tmp_path / "files", 1)
    files = CacheFiles(tmp_path / "cache")
    entry = lake.build(files, None).entry
    manifest = tmp_path / "cache" / entry.fingerprint / MANIFEST
    saved = manifest.read_text()
    monkeypatch.setattr(fingerprint.duckdb, "__version__", "0.0.0")
    assert files.entry(entry.fingerprint) is None
    monkeypatch.undo()
    assert files.entry(entry.fingerprint) == entry
    wrong_views = json.dumps({**json.loads(saved), "views": {"s.t0": ["s"]}})
    elsewhere = json.dumps({**json.loads(saved), "build": "../elsewhere"})
    for bad in ("{", "[]", wrong_views, elsewhere):
        manifest.write_text(bad)
        assert files.entry(entry.fingerprint) is None
    assert entry.database.name == f"{TABLES_CATALOG}.duckdb"


# -- state readers and the legacy snapshot ---------------------------------------------------------


def test_state_readers_decode_again_only_on_a_change_and_clear_acts_as_a_new_process(lake_case) -> None:
    lake = lake_case.lake()
    store = views_table(lake)
    store.write(upserts=[ViewDefinition("sales", "v", "SELECT 1", "user").row()])
    readers = StateReaders()
    table = readers.reader(lake, store.directory, store.spec)
    assert readers.reader(lake, store.directory, store.spec) is table
    table.refresh(force=True)
    first = readers.definitions(lake, table)
    assert [view_key(v) for v in first.views] == ["sales.v"]
    lake.storage.counters.reset()
    table.refresh(force=True)
    assert readers.definitions(lake, table) is first  # same version: not decoded again
    assert lake.storage.counters.snapshot()["GET"] == 0
    store.write(upserts=[ViewDefinition("sales", "w", "SELECT 2", "user").row()])
    table.refresh(force=True)
    assert [view_key(v) for v in readers.definitions(lake, table).views] == ["sales.v", "sales.w"]
    rows = readers.rows(lake, table)
    assert rows is not None and sorted(rows["view_name"].to_pylist()) == ["v", "w"]
    assert readers.packed(lake, {"views": [(None, rows)]}) is readers.packed(lake, {"views": [(None, rows)]})
    readers.clear()
    assert readers.reader(lake, store.directory, store.spec) is not table


def test_local_snapshot_reads_the_legacy_files(tmp_path: Path) -> None:
    from aperio_assets.catalog.legacy import local_snapshot
    from aperio_assets.lake import open_lake
    from aperio_assets.state import open_tracker
    from aperio_assets.state.tables import CONVERSIONS, PARTITION_STATUS, TABLE_COMPLETION

    (tmp_path / "lake" / "sales").mkdir(parents=True)
    config = tmp_path / "aperio.yaml"
    config.write_text("baseDirectory: lake\nstateStorage: local\nschemas: [sales]\n")
    lake = open_lake(str(config))
    schema = lake.schema("sales")
    assert local_snapshot(lake, schema, PARTITION_STATUS) is None and local_snapshot(lake, schema, CONVERSIONS) is None
    tracker = open_tracker(lake, "sales")
    tracker.mark_processed("orders", "orders", {"year": "2024"})
    tracker.mark_table_complete("p", "sig")
    status = local_snapshot(lake, schema, PARTITION_STATUS)
    assert status is not None and status["alternate_name"].to_pylist() == ["orders"]
    completion = local_snapshot(lake, schema, TABLE_COMPLETION)
    assert completion is not None and completion["pipeline_name"].to_pylist() == ["p"]


def test_open_catalogs_hand_out_independent_connections_and_hold_a_bounded_number(tmp_path: Path) -> None:
    from aperio_assets.catalog.cache import OpenCatalogs

    lake = _Lake(tmp_path / "files", 1)
    files = CacheFiles(tmp_path / "cache")
    first = lake.build(files, None).entry
    catalogs = OpenCatalogs()
    a, b = catalogs.connect("lake", first.database), catalogs.connect("lake", first.database)
    a.register("only_in_a", pack({}))
    assert b.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = 'only_in_a'").fetchone() == (0,)
    a.close()
    assert b.execute("SELECT id FROM s.t0").fetchall() == [(0,)]  # closing one leaves the other open
    # a new build for the lake: the old file is let go, a connection on it still reads
    lake.views[0] = lake.view(0, value=2)
    second = lake.build(files, files.latest("lake")).entry
    c = catalogs.connect("lake", second.database)
    assert c.execute("SELECT value FROM s.t0").fetchall() == [(2,)]
    assert b.execute("SELECT value FROM s.t0").fetchall() == [(1,)]
    for i in range(OpenCatalogs.MAX_HELD + 2):
        catalogs.connect(f"other-{i}", first.database).close()
    assert len(catalogs._held) == OpenCatalogs.MAX_HELD and "lake" not in catalogs._held
    catalogs.clear()
    assert catalogs._held == {} and c.execute("SELECT 1").fetchone() == (1,)

"""What a catalog connect costs in storage requests (DESIGN §7): a warm connect lists each state
directory once and does nothing per table or view; a connect after a change of the definitions binds
only the views that changed (and the user views that read them)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from aperio_assets.catalog import ViewStore, open_catalog
from aperio_assets.catalog.cache import PROCESS_CACHE
from aperio_assets.catalog.fingerprint import view_key
from aperio_assets.catalog.views import views_table
from aperio_assets.lake import Lake
from aperio_tests.helpers import FaultyS3, LakeCase, build_catalog_lake


def _providers(lake: Lake) -> list:
    return [lake.storage] if lake.lake_storage is lake.storage else [lake.storage, lake.lake_storage]


def _reset(lake: Lake) -> None:
    for provider in _providers(lake):
        provider.counters.reset()


def _requests(lake: Lake) -> dict[str, int]:
    total: dict[str, int] = {}
    for provider in _providers(lake):
        for kind, n in provider.counters.snapshot().items():
            if n:
                total[kind] = total.get(kind, 0) + n
    return total


def _state_directories(lake: Lake) -> list[str]:
    names = ("partition_status", "table_completion", "conversions")
    return [lake.storage.aperio_path(s.name, n) for s in lake.schemas() for n in names] + [
        lake.storage.aperio_path(None, "catalog/views")
    ]


@pytest.fixture(autouse=True)
def _a_fresh_process() -> None:
    PROCESS_CACHE.clear()  # what earlier tests read must not make these counts smaller


def test_a_warm_connect_lists_each_state_directory_once_and_nothing_per_view(lake_case: LakeCase) -> None:
    lake = build_catalog_lake(lake_case)
    directories = _state_directories(lake)
    first = open_catalog(lake)[1]
    assert first.cache == "built" and len(first.bound) == first.views == 4
    state_files = sum(len(lake.storage.list(d)) for d in directories)
    for process in ("same", "new"):
        if process == "new":
            PROCESS_CACHE.clear()  # as in a new process: the cache file is there, no reader is
        _reset(lake)
        con, report = open_catalog(lake)
        assert (report.cache, report.bound, report.views) == ("hit", [], 4)
        expected = {"LIST": len(directories)} | ({"GET": state_files} if process == "new" else {})
        assert _requests(lake) == expected, process
        assert con.execute("SELECT count(*) FROM sales.orders").fetchone() == (3,)
        con.close()
    # ten times the views: a warm connect costs the same
    store = ViewStore(lake)
    for i in range(36):
        store.add("sales", f"u{i}", f"SELECT id FROM sales.orders WHERE id > {i}")
    grown = open_catalog(lake)[1]
    assert grown.cache == "built" and grown.bound == sorted(f"sales.u{i}" for i in range(36))
    assert grown.views == 40
    _reset(lake)
    con, report = open_catalog(lake)
    assert (report.cache, report.bound, report.views) == ("hit", [], 40)
    assert _requests(lake) == {"LIST": len(directories)}
    assert con.execute("SELECT count(*) FROM sales.u1").fetchone() == (2,)


def test_a_connect_after_one_definition_changed_binds_only_that_view_and_its_readers(lake_case: LakeCase) -> None:
    lake = build_catalog_lake(lake_case)
    store = ViewStore(lake)
    store.add("sales", "named", "SELECT o.id, c.name FROM sales.orders o JOIN ref.carriers c USING (carrier)")
    store.add("sales", "big", "SELECT * FROM sales.orders WHERE amount >= 20")
    first = open_catalog(lake)[1]
    assert first.cache == "built" and first.bound == sorted(view_key(v) for v in store.list())
    carriers = next(v for v in store.list() if view_key(v) == "ref.carriers")
    # changed by another process (another Lake): this Lake's own write would need no GET (its tables
    # are the catalog's readers, test_state_sharing)
    changed = replace(carriers, sql=f"{carriers.sql} WHERE carrier <> 'UA'")
    views_table(lake_case.lake()).write(upserts=[changed.row()])
    _reset(lake)
    con, report = open_catalog(lake)
    assert report.cache == "built" and report.broken == {}
    assert report.bound == ["ref.carriers", "sales.named"]  # sales.named reads ref.carriers; nothing else
    # the state: one LIST per directory, one GET (the new definitions file); the binding is DuckDB's
    assert _requests(lake) == {"LIST": len(_state_directories(lake)), "GET": 1}
    assert con.execute("SELECT name FROM sales.named ORDER BY id").fetchall() == [("American",), ("American",)]
    assert con.execute("SELECT count(*) FROM sales.big").fetchone() == (2,)  # came with the copy
    assert con.execute("SELECT count(*) FROM sales.orders").fetchone() == (3,)
    con.close()
    # the connect after that is warm again
    _reset(lake)
    again = open_catalog(lake)[1]
    assert (again.cache, again.bound) == ("hit", [])
    assert _requests(lake) == {"LIST": len(_state_directories(lake))}


def test_a_warm_connect_on_s3_sends_duckdb_no_request(faulty_s3: FaultyS3, s3_bucket: str, tmp_path) -> None:
    """Every request, aperio's and DuckDB's (httpfs), through a counting proxy: a warm connect sends
    exactly the provider's LISTs; binding one changed view sends DuckDB fewer requests than binding
    them all."""
    from aperio_assets.storage import S3Storage

    S3Storage(faulty_s3.settings()).write_bytes(f"s3://{s3_bucket}/lake/sales/orders.csv", b"id\n1\n")
    config = tmp_path / "aperio.yaml"
    config.write_text(
        f"baseDirectory: s3://{s3_bucket}/lake\nstorage:\n  s3:\n    endpoint_url: {faulty_s3.endpoint_url}\n"
    )
    lake = build_catalog_lake(LakeCase("s3", str(config), f"s3://{s3_bucket}/lake"))

    def through_proxy(fn) -> tuple[int, int]:
        _reset(lake)
        before = faulty_s3.proxy.counts().get("requests", 0)
        fn()
        return faulty_s3.proxy.counts().get("requests", 0) - before, sum(_requests(lake).values())

    full, full_provider = through_proxy(lambda: open_catalog(lake)[0].close())
    warm, provider = through_proxy(lambda: open_catalog(lake)[0].close())
    assert warm == provider == len(_state_directories(lake))
    carriers = next(v for v in ViewStore(lake).list() if view_key(v) == "ref.carriers")
    views_table(lake).write(upserts=[replace(carriers, sql=f"{carriers.sql} WHERE true").row()])
    changed, provider = through_proxy(lambda: open_catalog(lake)[0].close())
    assert 0 < changed - provider < full - full_provider


def test_a_view_whose_files_share_their_columns_binds_from_one_footer(
    faulty_s3: FaultyS3, s3_bucket: str, tmp_path
) -> None:
    """Binding a generated view costs DuckDB a request per file only when its files' columns differ
    (``union_by_name`` reads every footer); when the lineage shows them all alike, one footer is
    enough, however many files (DESIGN §7). Both views read what the files hold."""
    from aperio_assets.conversion.refresh import refresh
    from aperio_assets.storage import S3Storage

    files = 12
    raw = S3Storage(faulty_s3.settings())
    for day in range(files):
        raw.write_bytes(f"s3://{s3_bucket}/lake/s/same/day={day:02d}/a.csv", f"id,v\n{day},x\n".encode())
        extra = ",w" if day == 5 else ""  # one file with a column more
        raw.write_bytes(
            f"s3://{s3_bucket}/lake/s/drift/day={day:02d}/a.csv",
            f"id,v{extra}\n{day},y{',z' if extra else ''}\n".encode(),
        )
    config = tmp_path / "aperio.yaml"
    config.write_text(
        f"baseDirectory: s3://{s3_bucket}/lake\nstorage:\n  s3:\n    endpoint_url: {faulty_s3.endpoint_url}\n"
    )
    from aperio_assets.lake import open_lake

    lake = open_lake(str(config))
    refresh(lake)
    con = open_catalog(lake)[0]
    sql = dict(con.execute("SELECT view_name, sql FROM duckdb_views() WHERE schema_name = 's'").fetchall())
    assert "union_by_name" not in sql["same"] and "union_by_name" in sql["drift"]

    def duckdb_requests(query: str) -> int:
        before = faulty_s3.proxy.counts().get("requests", 0)
        con.execute(query).fetchall()
        return faulty_s3.proxy.counts().get("requests", 0) - before

    con.execute("SET enable_http_metadata_cache = false")
    same = duckdb_requests("SELECT * FROM s.same LIMIT 0")
    drift = duckdb_requests("SELECT * FROM s.drift LIMIT 0")
    assert drift >= files  # every file's footer
    assert same <= 4, same  # a LIST and one file's footer
    assert con.execute("SELECT count(*), sum(id), min(v), max(v) FROM s.same").fetchone() == (files, 66, "x", "x")
    assert con.execute("SELECT count(*), count(w), max(w) FROM s.drift").fetchone() == (files, 1, "z")
    con.close()

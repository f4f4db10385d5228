"""Hostile object keys: two raw files never share a target, one unstorable name fails alone, glob
characters in names never make a view read another table's files, and nothing is written outside
`.aperio/` (SPEC §6, §7, §12)."""

from __future__ import annotations

import pytest

from aperio_assets.catalog import connect
from aperio_assets.conversion.refresh import refresh
from aperio_assets.state import open_lineage
from aperio_tests.conftest import LakeCase
from aperio_tests.test_refresh import put


def _rows(con, table: str) -> list[tuple]:
    quoted = table.replace('"', '""')
    return sorted(con.execute(f'SELECT v FROM sales."{quoted}"').fetchall())


def _files(lake) -> set[str]:
    return {f.path for f in lake.lake_storage.list(lake.config.base_directory, recursive=True)}


def _assert_written_only_under_aperio(lake, before: set[str], raw: set[str]) -> None:
    """Every file that appeared since ``before``, other than the raw files the test put, is below
    ``.aperio/``."""
    aperio = lake.config.aperio_directory.rstrip("/") + "/"
    outside = sorted(p for p in _files(lake) - before - raw if not p.startswith(aperio))
    assert outside == []


def test_plain_subfolders_never_share_a_target(lake_case: LakeCase) -> None:
    """nest/x/a.csv and nest/y/a.csv, logs/2024-01/app.csv and logs/2024-02/app.csv: every file's rows
    are in its table (the old naming kept only one of each pair)."""
    lake = lake_case.lake()
    put(lake, "sales/nest/x/a.csv", b"v\n1\n2\n")
    put(lake, "sales/nest/y/a.csv", b"v\n3\n")
    put(lake, "sales/logs/2024-01/app.csv", b"v\n10\n")
    put(lake, "sales/logs/2024-02/app.csv", b"v\n20\n21\n")
    put(lake, "sales/mixed/k=1/sub/f.csv", b"v\n7\n")
    put(lake, "sales/mixed/sub/k=1/f.csv", b"v\n8\n")  # same partition, same name, other folders
    (result,) = refresh(lake)
    assert not result.failed_files
    targets = [r["target_path"] for r in open_lineage(lake, "sales").records().values()]
    assert len(targets) == len(set(targets)) == 7  # the six and the fixture's orders.csv
    for path in targets:
        assert lake.storage.exists(path)
    con = connect(lake)
    assert _rows(con, "nest") == [(1,), (2,), (3,)]
    assert _rows(con, "logs") == [(10,), (20,), (21,)]
    assert _rows(con, "mixed") == [(7,), (8,)]
    tables = lake.storage.aperio_path("sales", "tables")
    assert lake.storage.exists(lake.storage.join(tables, "logs", "2024-01%2Fapp.csv.parquet"))
    assert lake.storage.exists(lake.storage.join(tables, "mixed", "k=1", "sub%2Fk=1%2Ff.csv.parquet"))


def test_empty_key_segments_are_kept_apart(s3, s3_bucket: str, tmp_path) -> None:
    """S3 keys may hold empty segments: t3/x.csv and t3//x.csv are two files with two targets."""
    from aperio_assets.lake import open_lake
    from aperio_assets.storage import S3Storage

    storage = S3Storage(s3.settings())
    storage.write_bytes(f"s3://{s3_bucket}/lake/sales/t3/x.csv", b"v\n1\n")
    storage.write_bytes(f"s3://{s3_bucket}/lake/sales/t3//x.csv", b"v\n2\n")
    config = tmp_path / "aperio.yaml"
    config.write_text(f"baseDirectory: s3://{s3_bucket}/lake\nstorage:\n  s3:\n    endpoint_url: {s3.endpoint_url}\n")
    lake = open_lake(config)
    (result,) = refresh(lake)
    assert not result.failed_files and result.count("files", "converted") == 2
    assert _rows(connect(lake), "t3") == [(1,), (2,)]


def test_a_target_is_stable_when_other_files_come_and_go(lake_case: LakeCase) -> None:
    lake = lake_case.lake()
    put(lake, "sales/events/a.csv", b"v\n1\n")
    refresh(lake)
    (source,) = [p for p in open_lineage(lake, "sales").records() if p.endswith("events/a.csv")]
    before = open_lineage(lake, "sales").records()[source]["target_path"]
    put(lake, "sales/events/a.json", b'[{"v": 2}]')
    (again,) = refresh(lake)
    assert again.count("files", "converted") == 1  # only the new file: a.csv keeps its target
    assert open_lineage(lake, "sales").records()[source]["target_path"] == before
    assert _rows(connect(lake), "events") == [(1,), (2,)]


def test_a_name_too_long_to_store_fails_alone(lake_case: LakeCase) -> None:
    """A raw key whose converted key would pass S3's 1,024-byte limit (locally: a file name over 255
    bytes) is a failed conversion with the reason; every other file converts."""
    lake = lake_case.lake()
    long_name = "é" * 125 + ".csv"  # 254 bytes: a storable raw name, too long once suffixed
    deep = "/".join(["d" * 245] * 4)  # an S3 key under the limit whose target is over it
    put(lake, f"sales/long/{long_name}", b"v\n1\n")
    if lake_case.kind == "s3":
        put(lake, f"sales/deep/{deep}/f.csv", b"v\n1\n")
    put(lake, "sales/fine.csv", b"v\n5\n")
    (result,) = refresh(lake)
    failed = {f.table: f.error for f in result.failed_files}
    # S3 has no per-name limit, so there the long name converts; only the deep key fails
    expected = {"deep"} if lake_case.kind == "s3" else {"long"}
    assert set(failed) == expected, failed
    assert all("limit" in reason for reason in failed.values())
    assert result.count("files", "converted") == (3 if lake_case.kind == "s3" else 2)
    assert _rows(connect(lake), "fine") == [(5,)]


@pytest.mark.parametrize("lake_case", ["local", "s3"], indirect=True)
def test_glob_characters_in_names_read_exactly_their_own_rows(lake_case: LakeCase) -> None:
    lake = lake_case.lake()
    before = _files(lake)
    tables = {"star*": 1, "starx": 2, "br[ab]": 3, "bra": 4, "curly{a,b}": 5, "curlya": 6, "pct%41": 7, "pctA": 8,
              "q?": 9, "qx": 10, "back\\slash": 11}
    raw = set()
    for name, value in tables.items():
        raw.add(put(lake, f"sales/{name}.csv", f"v\n{value}\n".encode()))  # single-file tables
        raw.add(put(lake, f"sales/f_{name}/part.csv", f"v\n{value * 100}\n".encode()))  # folder tables
    (result,) = refresh(lake)
    assert not result.failed_files, result.failed_files
    con = connect(lake)
    for name, value in tables.items():
        assert _rows(con, name) == [(value,)], name
        assert _rows(con, f"f_{name}") == [(value * 100,)], name
    _assert_written_only_under_aperio(lake, before, raw)


def test_raw_parquet_with_glob_characters_is_read_alone(lake_case: LakeCase) -> None:
    import polars as pl

    from aperio_tests.test_refresh import parquet_bytes

    lake = lake_case.lake()
    put(lake, "sales/p*.parquet", parquet_bytes(pl.DataFrame({"v": [1]})))
    put(lake, "sales/px.parquet", parquet_bytes(pl.DataFrame({"v": [2]})))
    (result,) = refresh(lake)
    assert not result.failed_files
    con = connect(lake)
    assert _rows(con, "p*") == [(1,)]
    assert _rows(con, "px") == [(2,)]


def test_odd_names_become_tables_and_nothing_leaves_aperio(lake_case: LakeCase) -> None:
    lake = lake_case.lake()
    before = _files(lake)
    odd = {"tab\tle": 1, "quo\"te's": 2, "ünïcødé 表": 3, "x" * 200: 4, "semi;colon --": 5, "a=b": 6}
    raw = {put(lake, f"sales/{name}/part.csv", f"v\n{value}\n".encode()) for name, value in odd.items()}
    raw.add(put(lake, "sales/ctrl\x01char.csv", b"v\n8\n"))
    if lake_case.kind == "s3":  # keys only S3 can hold: '..' segments, read like hidden folders
        raw.add(put(lake, "sales/../escape.csv", b"v\n6\n"))
        raw.add(put(lake, "sales/dots/../../up.csv", b"v\n7\n"))
    (result,) = refresh(lake)
    assert not result.failed_files, result.failed_files
    con = connect(lake)
    for name, value in odd.items():
        assert _rows(con, name) == [(value,)], name
    assert _rows(con, "ctrl\x01char") == [(8,)]
    views = {n for (n,) in con.execute("SELECT view_name FROM duckdb_views() WHERE schema_name = 'sales'").fetchall()}
    assert not views & {"..", "dots", "escape", "up"}
    _assert_written_only_under_aperio(lake, before, raw)
    for row in open_lineage(lake, "sales").records().values():
        if row["target_path"]:
            assert row["target_path"].startswith(lake.storage.aperio_path("sales", "tables") + "/")
            assert "/../" not in row["target_path"] and not row["target_path"].endswith("/..")


def test_a_lake_converted_under_the_old_naming_moves_over(lake_case: LakeCase) -> None:
    """Under the old naming nest/x/a.csv and nest/y/a.csv shared tables/nest/a.parquet (one file's
    rows lost). The next refresh converts both to their own targets and deletes the shared one."""
    lake = lake_case.lake()
    put(lake, "sales/nest/x/a.csv", b"v\n1\n")
    put(lake, "sales/nest/y/a.csv", b"v\n2\n")
    refresh(lake)
    lineage = open_lineage(lake, "sales")
    rows = {p: r for p, r in lineage.records().items() if "/nest/" in p}
    old = lake.storage.join(lake.storage.aperio_path("sales", "tables"), "nest", "a.parquet")
    lake.storage.write_bytes(old, lake.storage.read_bytes(rows[sorted(rows)[1]]["target_path"]))
    for row in rows.values():
        lake.storage.delete(row["target_path"])
    lineage.record_many([{**row, "target_path": old} for row in rows.values()])

    (result,) = refresh(lake)
    assert sorted(f.source.rsplit("/", 2)[-2] for f in result.files if f.status == "converted") == ["x", "y"]
    assert not lake.storage.exists(old)
    assert _rows(connect(lake), "nest") == [(1,), (2,)]
    targets = {r["target_path"] for p, r in open_lineage(lake, "sales").records().items() if "/nest/" in p}
    assert len(targets) == 2 and all(lake.storage.exists(t) for t in targets)

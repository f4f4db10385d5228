"""Hostile object keys: two raw files never share a target, one unstorable name fails alone, glob
characters in names never make a view read another table's files, and nothing is written outside
`.aperio/` (DESIGN §6, §7, §12)."""

from __future__ import annotations

import os

import polars as pl
import pytest

from aperio_assets.catalog import connect
from aperio_assets.cli.refresh import summary
from aperio_assets.conversion.refresh import refresh
from aperio_assets.errors import StorageError, StorageUnavailable
from aperio_assets.state import open_lineage
from aperio_tests.helpers import LakeCase, parquet_bytes, put


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


def _s3_lake(s3, s3_bucket: str, tmp_path, raw: dict[str, bytes]):
    """A lake at ``s3://bucket/lake`` holding ``raw`` (keys below ``lake/``, written as they are)."""
    from aperio_assets.lake import open_lake
    from aperio_assets.storage import S3Storage

    storage = S3Storage(s3.settings())
    for key, data in raw.items():
        storage.write_bytes(f"s3://{s3_bucket}/lake/{key}", data)
    config = tmp_path / "aperio.yaml"
    config.write_text(f"baseDirectory: s3://{s3_bucket}/lake\nstorage:\n  s3:\n    endpoint_url: {s3.endpoint_url}\n")
    return open_lake(config)


def test_plain_subfolders_never_share_a_target(lake_case: LakeCase) -> None:
    """nest/x/a.csv and nest/y/a.csv, logs/2024-01/app.csv and logs/2024-02/app.csv: every file's rows
    are in its table (the old naming kept only one of each pair)."""
    lake = lake_case.lake()
    before = _files(lake)
    raw = {
        put(lake, "sales/nest/x/a.csv", b"v\n1\n2\n"),
        put(lake, "sales/nest/y/a.csv", b"v\n3\n"),
        put(lake, "sales/logs/2024-01/app.csv", b"v\n10\n"),
        put(lake, "sales/logs/2024-02/app.csv", b"v\n20\n21\n"),
        put(lake, "sales/mixed/k=1/sub/f.csv", b"v\n7\n"),
        put(lake, "sales/mixed/sub/k=1/f.csv", b"v\n8\n"),
    }  # same partition, same name, other folders
    (result,) = refresh(lake)
    assert not result.failed_files
    _assert_written_only_under_aperio(lake, before, raw)
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
    lake = _s3_lake(s3, s3_bucket, tmp_path, {"sales/t3/x.csv": b"v\n1\n", "sales/t3//x.csv": b"v\n2\n"})
    (result,) = refresh(lake)
    assert not result.failed_files and result.count("files", "converted") == 2
    assert _rows(connect(lake), "t3") == [(1,), (2,)]


def test_a_target_is_stable_when_other_files_come_and_go(lake_case: LakeCase) -> None:
    """a.csv's target is the same before and after a.json is added beside it (the old naming moved it
    to a.csv.parquet once a.json came, and left a.parquet behind: a changed a.csv then read twice)."""
    from aperio_assets.conversion.refresh import SchemaRefresh

    lake = lake_case.lake()
    put(lake, "sales/events/a.csv", b"v\n1\n")
    refresh(lake)

    def named_target() -> str:
        run = SchemaRefresh(lake, lake.schema("sales"))
        (table,) = [t for t in run.discovery.tables if t.name == "events"]
        (raw,) = [f for f in table.files if f.relative == "a.csv"]
        return run.target_path(table, raw)

    (source,) = [p for p in open_lineage(lake, "sales").records() if p.endswith("events/a.csv")]
    before = open_lineage(lake, "sales").records()[source]["target_path"]
    assert named_target() == before
    put(lake, "sales/events/a.json", b'[{"v": 2}]')
    assert named_target() == before
    (again,) = refresh(lake)
    assert again.count("files", "converted") == 1  # only the new file: a.csv keeps its target
    assert open_lineage(lake, "sales").records()[source]["target_path"] == before
    assert _rows(connect(lake), "events") == [(1,), (2,)]
    put(lake, "sales/events/a.csv", b"v\n3\n4\n")  # a change is converted onto the same target
    (changed,) = refresh(lake)
    assert changed.count("files", "converted") == 1
    assert open_lineage(lake, "sales").records()[source]["target_path"] == before
    assert _rows(connect(lake), "events") == [(2,), (3,), (4,)]
    assert len(lake.storage.list(lake.storage.aperio_path("sales", "tables/events"))) == 2


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
    assert [f["error"] for f in summary(result)["failures"]] == list(failed.values())
    (row,) = [r for r in open_lineage(lake, "sales").records().values() if r["table_name"] in expected]
    assert row["target_path"] is None and row["error"] == failed[row["table_name"]]
    con = connect(lake)
    assert _rows(con, "fine") == [(5,)]
    assert con.execute("SELECT id FROM sales.orders").fetchall() == [(1,)]  # the fixture's table too


@pytest.mark.parametrize("lake_case", ["local", "s3"], indirect=True)
def test_glob_characters_in_names_read_exactly_their_own_rows(lake_case: LakeCase) -> None:
    lake = lake_case.lake()
    before = _files(lake)
    tables = {
        "star*": 1,
        "starx": 2,
        "br[ab]": 3,
        "bra": 4,
        "curly{a,b}": 5,
        "curlya": 6,
        "pct%41": 7,
        "pctA": 8,
        "q?": 9,
        "qx": 10,
        "back\\slash": 11,
    }
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
    refused = set()
    if lake_case.kind == "s3":  # keys only S3 can hold: '..' and '.' segments, a 400-character name
        odd["y" * 400] = 9
        raw.add(put(lake, f"sales/{'y' * 400}/part.csv", b"v\n9\n"))
        refused = {
            put(lake, "sales/../escape.csv", b"v\n6\n"),
            put(lake, "sales/dots/../../up.csv", b"v\n7\n"),
            put(lake, "sales/./here.csv", b"v\n7\n"),
            put(lake, "sales/up/../k=1/x.csv", b"v\n7\n"),
        }
        raw |= refused
    (result,) = refresh(lake)
    assert not result.failed_files, result.failed_files
    # a '..' or '.' segment is never followed, and never silently: ignored with the reason
    assert set(result.ignored_reasons) == refused
    assert all("'..' segment" in reason for reason in result.ignored_reasons.values())
    assert refused <= set(summary(result)["ignoredFiles"])
    con = connect(lake)
    for name, value in odd.items():
        assert _rows(con, name) == [(value,)], name
    assert _rows(con, "ctrl\x01char") == [(8,)]
    # a table named a=b is not read as a Hive partition folder: no column `a`
    assert [c for (c, *_) in con.execute('DESCRIBE sales."a=b"').fetchall()] == ["v"]
    views = {n for (n,) in con.execute("SELECT view_name FROM duckdb_views() WHERE schema_name = 'sales'").fetchall()}
    assert not views & {"..", ".", "dots", "escape", "up", "here"}
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


def test_an_empty_segment_below_the_schema_is_refused_not_merged(s3, s3_bucket: str, tmp_path) -> None:
    """sales/x.csv and sales//x.csv: the second has no table name (its folder is ''): it is ignored
    with the reason; before, both became table x_csv, converted onto one target (one file's rows lost)."""
    lake = _s3_lake(s3, s3_bucket, tmp_path, {"sales/x.csv": b"v\n1\n", "sales//x.csv": b"v\n2\n"})
    (result,) = refresh(lake)
    assert not result.failed_files and result.count("files", "converted") == 1
    assert list(result.ignored_reasons) == [f"s3://{s3_bucket}/lake/sales//x.csv"]
    assert "empty folder name" in result.ignored_reasons[f"s3://{s3_bucket}/lake/sales//x.csv"]
    assert _rows(connect(lake), "x") == [(1,)]


def test_table_names_that_clash_are_reported(lake_case: LakeCase) -> None:
    """Table names are DuckDB names (ASCII case ignored). x.csv + x.json beside a folder x_csv/ would make
    two tables x_csv (and x.csv and x_csv/x.csv one target); A.csv and a.csv two views of one name; a
    file planes.csv beside a folder Planes/ is planes_csv, as beside planes/. A name still taken is
    ignored with the reason: never two tables' rows in one view, never a table silently gone."""
    lake = lake_case.lake()
    before = _files(lake)
    raw = {
        put(lake, "sales/x.csv", b"v\n1\n"),
        put(lake, "sales/x.json", b'[{"v": 2}]'),
        put(lake, "sales/x_csv/x.csv", b"v\n3\n"),
        put(lake, "sales/A.csv", b"v\n4\n"),
        put(lake, "sales/a.csv", b"v\n5\n"),
        put(lake, "sales/Planes/p.csv", b"v\n6\n"),
        put(lake, "sales/planes.csv", b"v\n7\n"),
    }
    (result,) = refresh(lake)
    assert not result.failed_files
    base = lake.config.base_directory.rstrip("/")
    assert sorted(result.ignored_reasons) == [f"{base}/sales/a.csv", f"{base}/sales/x.csv"]
    assert (
        "'x_csv' is already the name of the table from the folder 'x_csv'"
        in result.ignored_reasons[f"{base}/sales/x.csv"]
    )
    assert (
        "'a_csv' is already the name of the table from the file 'A.csv'"
        in result.ignored_reasons[f"{base}/sales/a.csv"]
    )
    con = connect(lake)
    assert _rows(con, "x_csv") == [(3,)] and _rows(con, "x_json") == [(2,)]
    assert _rows(con, "A_csv") == [(4,)]
    assert _rows(con, "Planes") == [(6,)] and _rows(con, "planes_csv") == [(7,)]
    targets = [r["target_path"] for r in open_lineage(lake, "sales").records().values()]
    assert len(targets) == len(set(targets)) == 6  # the five tables' files and the fixture's orders.csv
    _assert_written_only_under_aperio(lake, before, raw)


def test_one_partition_spelled_two_ways_fails_the_second(lake_case: LakeCase) -> None:
    """k=a?b and k=a%3Fb are one Hive partition (DuckDB decodes %3F): their converted folders are one,
    so two files of one name in them would share a target. The second fails with the reason; the
    first is never overwritten."""
    lake = lake_case.lake()
    put(lake, "sales/sp/k=a?b/f.csv", b"v\n1\n")
    put(lake, "sales/sp/k=a%3Fb/f.csv", b"v\n2\n")
    put(lake, "sales/sp/k=c/f.csv", b"v\n3\n")
    (result,) = refresh(lake)
    (failed,) = result.failed_files
    assert failed.source.endswith("k=a?b/f.csv")  # k=a%3Fb sorts first and keeps the name
    assert "is already the target of" in failed.error and failed.error.endswith("rename one of the two files")
    con = connect(lake)
    assert sorted(con.execute("SELECT v, k FROM sales.sp").fetchall()) == [(2, "a?b"), (3, "c")]
    (again,) = refresh(lake)  # stays failed, reported every time, and still overwrites nothing
    assert [f.source for f in again.failed_files] == [failed.source]
    assert sorted(connect(lake).execute("SELECT v FROM sales.sp").fetchall()) == [(2,), (3,)]


def test_partition_folders_are_kept_and_read_as_they_were(lake_case: LakeCase) -> None:
    """The converted file's k=v folders are the raw ones, so the view reads the partition values a Hive
    reader reads from the raw folders (percent-decoded); what DuckDB cannot read in a partition folder
    ('?', a backslash, '=' in a value) is encoded, and read back as it was."""
    lake = lake_case.lake()
    values = {"a=b": 1, "a?b": 2, "a\\b": 3, "a*b": 4, "a[1]": 5, "..": 6, "2024-01-01 00%3A00%3A00": 7, "": 8}
    for value, v in values.items():
        put(lake, f"sales/pv/k={value}/part.csv", f"v\n{v}\n".encode())
    (result,) = refresh(lake)
    assert not result.failed_files
    read = {"2024-01-01 00%3A00%3A00": "2024-01-01 00:00:00"}
    con = connect(lake)
    assert sorted(con.execute("SELECT v, k FROM sales.pv").fetchall()) == sorted(
        (v, read.get(value, value)) for value, v in values.items()
    )
    tables = lake.storage.aperio_path("sales", "tables")
    assert lake.storage.exists(lake.storage.join(tables, "pv", "k=2024-01-01 00%3A00%3A00", "part.csv.parquet"))
    assert lake.storage.exists(lake.storage.join(tables, "pv", "k=a%3Db", "part.csv.parquet"))


def test_a_rejected_upload_fails_that_file_alone(lake_case: LakeCase, monkeypatch: pytest.MonkeyPatch) -> None:
    """A StorageError from one file's upload (S3 rejected it) is that file's failure, with the reason;
    the other files convert and the refresh completes."""
    lake = lake_case.lake()
    put(lake, "sales/good.csv", b"v\n1\n")
    put(lake, "sales/rejected.csv", b"v\n2\n")
    upload = lake.storage.upload

    def rejecting(local_path: str, path: str) -> None:
        if path.endswith("/rejected.csv.parquet"):
            raise StorageError(f"S3 rejected the upload of {path}: InvalidRequest")
        upload(local_path, path)

    monkeypatch.setattr(lake.storage, "upload", rejecting)
    (result,) = refresh(lake)
    (failed,) = result.failed_files
    assert failed.table == "rejected" and "InvalidRequest" in failed.error
    assert result.count("files", "converted") == 2  # good.csv and the fixture's orders.csv
    (row,) = [r for r in open_lineage(lake, "sales").records().values() if r["table_name"] == "rejected"]
    assert row["target_path"] is None and "InvalidRequest" in row["error"]
    assert _rows(connect(lake), "good") == [(1,)]


def test_unavailable_storage_still_stops_the_refresh(lake_case: LakeCase, monkeypatch: pytest.MonkeyPatch) -> None:
    lake = lake_case.lake()
    put(lake, "sales/good.csv", b"v\n1\n")

    def down(local_path: str, path: str) -> None:
        raise StorageUnavailable("the endpoint refused the connection")

    monkeypatch.setattr(lake.storage, "upload", down)
    with pytest.raises(StorageUnavailable):
        refresh(lake)


def test_a_local_name_the_filesystem_refuses_fails_that_file_alone(tmp_path) -> None:
    """On local disk an upload the filesystem refuses for this name only (here: a file where the table's
    folder would be) fails that file with the reason; a full disk would stop the refresh."""
    from aperio_assets.lake import open_lake

    (tmp_path / "lake" / "sales" / "blocked").mkdir(parents=True)
    (tmp_path / "lake" / "sales" / "blocked" / "a.csv").write_text("v\n1\n")
    (tmp_path / "lake" / "sales" / "fine.csv").write_text("v\n2\n")
    tables = tmp_path / "lake" / ".aperio" / "sales" / "tables"
    tables.mkdir(parents=True)
    (tables / "blocked").write_text("not a folder")
    (tmp_path / "aperio.yaml").write_text("baseDirectory: lake\n")
    lake = open_lake(tmp_path / "aperio.yaml")
    (result,) = refresh(lake)
    (failed,) = result.failed_files
    assert failed.table == "blocked" and "cannot write" in failed.error
    assert "tables/blocked/a.csv.parquet" in failed.error
    assert _rows(connect(lake), "fine") == [(2,)]


@pytest.mark.parametrize("folder", ["la[k]e*", "la?e"])
def test_glob_characters_in_the_lake_directory_match_only_it(lake_case: LakeCase, tmp_path, folder: str) -> None:
    """The aperio directory is part of every view's pattern: its glob characters are escaped, so a view
    never reads a sibling directory the unescaped pattern would match (here `lake`, with a decoy)."""
    lake = lake_case.moved(lake_case.base.rsplit("/", 1)[0] + "/" + folder, tmp_path / "moved.yaml")
    decoy = parquet_bytes(pl.DataFrame({"v": [99]}))
    sibling = lake_case.base.rsplit("/", 1)[0] + "/lake"
    for path in ("sales/tables/t/k=1/decoy.parquet", "sales/tables/u/decoy.parquet"):
        lake.storage.write_bytes(lake.storage.join(sibling, ".aperio", path), decoy)
    put(lake, "sales/t/k=1/a.csv", b"v\n1\n")
    put(lake, "sales/u.csv", b"v\n2\n")
    put(lake, "sales/p.parquet", parquet_bytes(pl.DataFrame({"v": [3]})))
    (result,) = refresh(lake)
    con = connect(lake)
    views = {n for (n,) in con.execute("SELECT view_name FROM duckdb_views() WHERE schema_name = 'sales'").fetchall()}
    if lake_case.kind == "s3" and "?" in folder:
        # DuckDB's S3 reader takes '?' for a query string: it cannot read this lake's files at all (the
        # raw Parquet file fails with that reason), but it never reads the sibling's either
        assert [f.table for f in result.failed_files] == ["p"]
        assert all(v not in (99,) for t in views for (v, *_) in con.execute(f'SELECT * FROM sales."{t}"').fetchall())
        return
    assert not result.failed_files and {"t", "u", "p"} <= views
    assert con.execute("SELECT v, k FROM sales.t").fetchall() == [(1, 1)]
    assert _rows(con, "u") == [(2,)] and _rows(con, "p") == [(3,)]


def test_raw_parquet_duckdb_cannot_name_is_failed_not_leaked(lake_case: LakeCase) -> None:
    """A raw Parquet file is read in place by its literal path; one DuckDB cannot name (a backslash in a
    local path, a '?' in an S3 key) fails with the reason instead of reading the wrong files."""
    lake = lake_case.lake()
    odd = "p\\x.parquet" if lake_case.kind == "local" else "p?x.parquet"
    put(lake, f"sales/{odd}", parquet_bytes(pl.DataFrame({"v": [1]})))
    put(lake, "sales/pxx.parquet", parquet_bytes(pl.DataFrame({"v": [2]})))
    (result,) = refresh(lake)
    (failed,) = result.failed_files
    assert failed.source.endswith(odd) and "cannot be read in place" in failed.error
    con = connect(lake)
    assert _rows(con, "pxx") == [(2,)]
    views = {n for (n,) in con.execute("SELECT view_name FROM duckdb_views() WHERE schema_name = 'sales'").fetchall()}
    assert odd.removesuffix(".parquet") not in views


@pytest.mark.parametrize(
    ("name", "fmt", "body", "other"),
    [
        ("star*.csv", "csv", "v\n1\n", "v\n2\n"),
        ("q?.jsonl", "jsonl", '{"v": 1}\n', '{"v": 2}\n'),
        ("b[ab].json", "json", '[{"v": 1}]', '[{"v": 2}]'),
    ],
)
def test_convert_file_reads_exactly_the_file_it_is_given(tmp_path, name: str, fmt: str, body: str, other: str) -> None:
    """Polars expands glob characters in a source path: star*.csv also read starx.csv."""
    from aperio_assets.conversion.formats import convert_file

    source = tmp_path / name
    source.write_text(body)
    (tmp_path / name.replace("*", "x").replace("?", "x").replace("[ab]", "a")).write_text(other)
    converted = convert_file(source, fmt, tmp_path / "out.parquet")
    assert converted.row_count == 1
    assert pl.read_parquet(tmp_path / "out.parquet")["v"].to_list() == [1]


def test_a_local_name_that_is_not_utf8_is_ignored_with_the_reason(tmp_path) -> None:
    """A local file name in another encoding made the CSV reader raise and stopped the whole schema;
    nothing could store its name in lineage either. It is ignored with the reason, its bytes escaped."""
    from aperio_assets.lake import open_lake

    (tmp_path / "lake" / "sales").mkdir(parents=True)
    (tmp_path / "lake" / "sales" / "ok.csv").write_text("v\n1\n")
    with open(os.path.join(os.fsencode(tmp_path / "lake" / "sales"), b"bad\xff.csv"), "w") as f:
        f.write("v\n2\n")
    (tmp_path / "aperio.yaml").write_text("baseDirectory: lake\n")
    lake = open_lake(tmp_path / "aperio.yaml")
    (result,) = refresh(lake)
    assert not result.failed_files
    assert result.ignored_reasons == {str(tmp_path / "lake" / "sales" / "bad\\xff.csv"): "its name is not valid UTF-8"}
    assert _rows(connect(lake), "ok") == [(1,)]


def test_files_with_different_partition_keys_all_show(lake_case: LakeCase) -> None:
    """A table whose files sit at different Hive depths (or under different keys) shows every file's
    rows, NULL where a file has no value for a partition column (DuckDB's Hive reader alone refuses
    such a mix), raw Parquet read in place included."""
    lake = lake_case.lake()
    put(lake, "sales/mix/year=2020/month=01/a.csv", b"v\n1\n")
    put(lake, "sales/mix/year=2021/b.csv", b"v\n2\n")
    put(lake, "sales/mix/c.csv", b"v\n3\n")
    put(lake, "sales/mix/region=eu/d.csv", b"v\n4\n")
    put(lake, "sales/mix/year=2022/e.parquet", parquet_bytes(pl.DataFrame({"v": [5]})))
    put(lake, "sales/mix/f.parquet", parquet_bytes(pl.DataFrame({"v": [6]})))
    (result,) = refresh(lake)
    assert not result.failed_files
    rows = connect(lake).execute("SELECT v, year, month, region FROM sales.mix ORDER BY v").fetchall()
    assert rows == [
        (1, 2020, "01", None),
        (2, 2021, None, None),
        (3, None, None, None),
        (4, None, None, "eu"),
        (5, 2022, None, None),
        (6, None, None, None),
    ]


def test_partition_like_folders_above_the_tables_add_no_column(lake_case: LakeCase, tmp_path) -> None:
    """A lake kept under a `k=v` folder (`/data/env=prod/`), or a table folder named `a=b`, adds no
    column to any view: only the table's own partition folders are columns."""
    lake = lake_case.moved(lake_case.base.rsplit("/", 1)[0] + "/env=prod/lake", tmp_path / "moved.yaml")
    put(lake, "sales/t/k=1/a.csv", b"v\n1\n")
    put(lake, "sales/u.csv", b"v\n2\n")
    put(lake, "sales/p.parquet", parquet_bytes(pl.DataFrame({"v": [3]})))
    put(lake, "sales/a=b/x.csv", b"v\n4\n")
    put(lake, "sales/a=b/y.parquet", parquet_bytes(pl.DataFrame({"v": [5]})))
    (result,) = refresh(lake)
    assert not result.failed_files
    con = connect(lake)

    def columns(view: str) -> list[str]:
        return [d[0] for d in con.execute(f'SELECT * FROM sales."{view}"').description]

    assert columns("t") == ["v", "k"] and columns("u") == ["v"] and columns("p") == ["v"]
    assert columns("a=b") == ["v"]
    assert con.execute('SELECT v FROM sales."a=b" ORDER BY v').fetchall() == [(4,), (5,)]


def test_a_converted_file_deleted_by_hand_is_converted_again(lake_case: LakeCase) -> None:
    """The refresh does not trust lineage alone: a converted file that is gone (deleted by hand, lost
    in a restore) is converted again from its unchanged raw file, and the view shows its rows."""
    lake = lake_case.lake()
    put(lake, "sales/keep/a.csv", b"v\n1\n")
    put(lake, "sales/keep/b.csv", b"v\n2\n")
    refresh(lake)
    target = open_lineage(lake, "sales").records()[
        lake.lake_storage.join(lake.config.base_directory, "sales/keep/a.csv")
    ]["target_path"]
    lake.storage.delete(target)
    (again,) = refresh(lake)
    assert [f.source.rsplit("/", 1)[-1] for f in again.files if f.status == "converted"] == ["a.csv"]
    assert lake.storage.exists(target)
    assert _rows(connect(lake), "keep") == [(1,), (2,)]
    (third,) = refresh(lake)
    assert third.count("files", "converted") == 0

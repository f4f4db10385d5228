"""Legacy single-node (local mode) state for the demo lake, in the exact DESIGN §4 formats.

It is what an older aperio would have left in ``<lake>/.aperio/``, including the untidy parts that
migration must cope with: unsorted JSON batch keys duplicated by sorted ones, an error row, a schema
written by an old version (no late columns, no ``table_completion``), all three ``.conversions.json``
record fields with an unknown extra one, and a persistent catalog with a user view and a macro.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from aperio_assets.demo.lake import DemoLake, DemoTable, replacing
from aperio_assets.sqlutil import quote_identifier, quote_literal
from aperio_assets.state.keys import canonical_key
from aperio_assets.state.legacy_schema import (
    ERROR_MESSAGE_LIMIT,
    PARTITION_STATUS_DDL,
    PARTITION_STATUS_DDL_OLD,
    TABLE_COMPLETION_DDL,
)

LEGACY_MONTHS = ("01", "02", "03", "04", "05", "06")
UNSORTED_ONLY_MONTH = "05"  # unsorted legacy key with no sorted twin: canonicalised, nothing to merge
DUPLICATED_MONTH = "02"  # present both ways; the unsorted row is the newer one and must win
ERROR_MONTH = "04"


def _ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


# Fixed times (2024) so the state is deterministic; ordered as a real history would be.
REFERENCE_PROCESSED_AT = _ms(2024, 1, 15, 8, 0)
SOURCE_WATERMARK = _ms(2024, 2, 28, 23, 30)
OLD_PROCESSED_AT = _ms(2024, 2, 1, 6, 0)
PROCESSED_AT = _ms(2024, 3, 4, 9, 0)
COMPLETED_AT = _ms(2024, 3, 4, 10, 0)
CONVERTED_AT = _ms(2024, 3, 4, 8, 30)


def legacy_key(key: dict[str, str]) -> str:
    """How legacy writers serialised keys: insertion order, default separators."""
    return json.dumps(key)


def _sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _write_json(path: Path, document: Any) -> None:
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _write_lock(path: Path) -> None:
    # The legacy store's lock file: empty, it only exists to be flock()ed.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def _tables_dir(aperio: Path, table: DemoTable) -> Path:
    return aperio / table.schema / "tables" / table.name


def _write_duckdb(path: Path, statements: list[str], rows: dict[str, list[tuple[Any, ...]]]) -> None:
    with replacing(path, sidecars=(".wal",)) as tmp:
        con = duckdb.connect(str(tmp))
        try:
            for statement in statements:
                con.execute(statement)
            for table, values in rows.items():
                if values:
                    marks = ", ".join("?" * len(values[0]))
                    con.executemany(f"INSERT INTO {table} VALUES ({marks})", values)
            # Fold the WAL into the file so the database is one self-contained file once closed.
            con.execute("CHECKPOINT")
        finally:
            con.close()


def _flights_status_rows(aperio: Path, lake: DemoLake) -> list[tuple[Any, ...]]:
    flights = lake.table("flights", "flights")
    target = _tables_dir(aperio, flights)
    rows: list[tuple[Any, ...]] = []
    for index, part in enumerate(p for p in flights.partitions if p.key["month"] in LEGACY_MONTHS):
        month = part.key["month"]
        pattern = str(target / f"year={part.key['year']}" / f"month={month}" / "*.parquet")
        at = PROCESSED_AT + index * 60_000
        if month == ERROR_MONTH:
            message = (
                f"Conversion failed for {part.path}: Could not convert string 'N/A' to INT64 in "
                "column 'dep_delay' (line 17)"
            )
            rows.append(
                (
                    "flights",
                    canonical_key(part.key),
                    "flights",
                    pattern,
                    at,
                    None,
                    True,
                    message[:ERROR_MESSAGE_LIMIT],
                    "convert",
                )
            )
            continue
        if month == DUPLICATED_MONTH:
            rows.append(
                (
                    "flights",
                    canonical_key(part.key),
                    "flights",
                    pattern,
                    OLD_PROCESSED_AT,
                    part.row_count,
                    False,
                    None,
                    "materialize",
                )
            )
        key = legacy_key(part.key) if month in (DUPLICATED_MONTH, UNSORTED_ONLY_MONTH) else canonical_key(part.key)
        # Month 03 has no phase, as written by a version that did not record one.
        phase = None if month == "03" else "materialize"
        rows.append(("flights", key, "flights", pattern, at, part.row_count, False, None, phase))
    for name in ("planes", "weather"):
        table = lake.table("flights", name)
        rows.append(
            (
                name,
                "{}",
                name,
                str(_tables_dir(aperio, table) / "*.parquet"),
                PROCESSED_AT,
                table.row_count,
                False,
                None,
                "materialize",
            )
        )
    return rows


def _completion_rows(lake: DemoLake) -> list[tuple[Any, ...]]:
    rows = []
    for table in lake.schema_tables("flights"):
        files = [(p.key, p.row_count) for p in table.partitions] if table.partitions else [({}, table.row_count)]
        signature = _sha256({"table": table.name, "files": files})
        config_hash = _sha256(
            {"format": table.source_format, "columns": table.columns, "partitions": list(table.partition_columns)}
        )[:16]
        rows.append((table.name, signature, config_hash, table.row_count, SOURCE_WATERMARK, COMPLETED_AT))
    return rows


def _conversion_record(aperio: Path, table: DemoTable, **overrides: Any) -> dict[str, Any]:
    data = table.path.read_bytes()
    converted = str(_tables_dir(aperio, table) / f"{table.name}.parquet")
    record: dict[str, Any] = {
        "tableName": table.name,
        "tableType": "table",
        "sourceFile": str(table.path),
        "sourceType": table.source_format,
        "originalFile": str(table.path),
        "convertedFile": converted,
        "conversionType": f"{table.source_format}_to_parquet",
        "parquetCacheFile": converted,
        "viewScanPattern": str(_tables_dir(aperio, table) / "*.parquet"),
        "refreshEnabled": True,
        "refreshInterval": 3600,
        "timestamp": CONVERTED_AT,
        "etag": '"' + hashlib.md5(data).hexdigest() + '"',  # S3-style etag of a single-part upload
        "contentLength": len(data),
        "contentType": None,
        "tableConfig": None,
        "rowCount": table.row_count,
        "snapshotId": None,
        "baseline": None,
        "lastChangeCheck": PROCESSED_AT,
        "viewNeedsRefresh": False,
    }
    record.update(overrides)
    return record


def _flights_conversions(aperio: Path, lake: DemoLake) -> dict[str, Any]:
    weather = lake.table("flights", "weather")
    planes = lake.table("flights", "planes")
    return {
        str(weather.path): _conversion_record(
            aperio,
            weather,
            contentType="application/x-ndjson",
            tableConfig={"format": "jsonl", "hivePartitioning": False},
        ),
        str(planes.path): _conversion_record(
            aperio,
            planes,
            contentType="text/csv",
            refreshEnabled=False,
            refreshInterval=None,
            # Some legacy versions stored a list here; migration accepts both.
            parquetCacheFile=[str(_tables_dir(aperio, planes) / "planes.parquet")],
            snapshotId="demo-snapshot-0001",
            baseline={"rowCount": planes.row_count},
            viewNeedsRefresh=True,
            legacyNote="unknown field written by an old aperio; migration must keep it",
        ),
    }


def _reference_conversions(aperio: Path, lake: DemoLake) -> dict[str, Any]:
    airlines = lake.table("reference", "airlines")
    return {
        "conversions": {
            str(airlines.path): {
                "targetPath": str(aperio / "reference" / "converted" / "airlines.json"),
                "sourceModified": SOURCE_WATERMARK,
                "convertedAt": CONVERTED_AT,
            }
        }
    }


def _generated_model(schema: str, lake: DemoLake) -> dict[str, Any]:
    return {
        "schema": schema,
        "generatedAt": COMPLETED_AT,
        "tables": [
            {
                "name": t.name,
                "sourceFormat": t.source_format,
                "sourcePath": str(t.path),
                "partitionColumns": list(t.partition_columns),
                "columns": [{"name": n, "type": d} for n, d in t.columns.items()],
                "rowCount": t.row_count,
            }
            for t in lake.schema_tables(schema)
        ],
    }


def catalog_statements(lake: DemoLake) -> list[str]:
    """The persistent catalog's DDL: schemas, one view per table over the raw files, a user view and
    a macro. Paths are absolute, as the legacy catalog wrote them."""
    root = lake.root
    sources = {
        ("flights", "flights"): "read_csv_auto({}, hive_partitioning=true)".format(
            quote_literal(str(root / "flights" / "flights" / "*" / "*" / "*.csv"))
        ),
        ("flights", "planes"): f"read_csv_auto({quote_literal(str(root / 'flights' / 'planes.csv'))})",
        ("flights", "weather"): f"read_json_auto({quote_literal(str(root / 'flights' / 'weather.jsonl'))})",
        ("reference", "airports"): f"read_json_auto({quote_literal(str(root / 'reference' / 'airports.json'))})",
    }
    statements = [f"CREATE SCHEMA {quote_identifier(s)}" for s in lake.schemas]
    for (schema, name), source in sources.items():
        view = f"{quote_identifier(schema)}.{quote_identifier(name)}"
        statements.append(f"CREATE VIEW {view} AS SELECT * FROM {source}")
    # DuckDB reads xlsx only through an extension that would have to be downloaded: inline the rows.
    airlines = lake.table("reference", "airlines")
    if airlines.frame is None:
        raise ValueError("the airlines table was described without its rows")
    values = ", ".join("(" + ", ".join(quote_literal(str(v)) for v in row) + ")" for row in airlines.frame.iter_rows())
    columns = ", ".join(quote_identifier(c) for c in airlines.frame.columns)
    statements.append(f'CREATE VIEW "reference"."airlines" AS SELECT * FROM (VALUES {values}) AS t({columns})')
    statements.append(
        'CREATE VIEW "flights"."delays_by_carrier" AS\n'
        'SELECT f."carrier", l."name" AS "carrier_name", a."name" AS "origin_airport",\n'
        '       count(*) AS "flights", avg(f."dep_delay") AS "avg_dep_delay"\n'
        'FROM "flights"."flights" AS f\n'
        'JOIN "reference"."airports" AS a ON a."faa" = f."origin"\n'
        'LEFT JOIN "reference"."airlines" AS l ON l."carrier" = f."carrier"\n'
        'GROUP BY f."carrier", l."name", a."name"'
    )
    statements.append('CREATE MACRO "flights"."minutes_to_hours"(m) AS m / 60.0')
    return statements


def write_legacy_state(lake: DemoLake) -> Path:
    """Write the legacy local-mode state into the default aperioDirectory and return it."""
    aperio = lake.root / ".aperio"

    _write_duckdb(
        aperio / "flights" / ".partition_status.duckdb",
        [PARTITION_STATUS_DDL, TABLE_COMPLETION_DDL],
        {"partition_status": _flights_status_rows(aperio, lake), "table_completion": _completion_rows(lake)},
    )
    _write_json(aperio / "flights" / ".conversions.json", _flights_conversions(aperio, lake))
    _write_lock(aperio / "flights" / ".conversions.json.lock")

    reference_rows = [
        (t.name, "{}", t.name, str(_tables_dir(aperio, t) / "*.parquet"), REFERENCE_PROCESSED_AT)
        for t in lake.schema_tables("reference")
    ]
    _write_duckdb(
        aperio / "reference" / ".partition_status.duckdb",
        [PARTITION_STATUS_DDL_OLD],
        {"partition_status": reference_rows},
    )
    _write_json(aperio / "reference" / ".conversions.json", _reference_conversions(aperio, lake))
    _write_lock(aperio / "reference" / ".conversions.json.lock")

    for schema in lake.schemas:
        _write_json(aperio / schema / ".generated-model.json", _generated_model(schema, lake))

    _write_duckdb(aperio / ".duckdb" / "shared.duckdb", catalog_statements(lake), {})
    return aperio

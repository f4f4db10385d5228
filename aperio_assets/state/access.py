"""One state table of one schema, in whichever mode the schema uses: read its current rows, apply a
batch of upserts and deletes. The refresh, the CLI and the Dagster IO manager all read and write
state through this, so shared mode is the §5 protocol and local mode the legacy stores, everywhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import polars as pl
import pyarrow as pa

from aperio_assets import layout
from aperio_assets.lake import Lake
from aperio_assets.state.duckdb_tracker import DuckDBPartitionStatusStore
from aperio_assets.state.lineage import JsonLineage
from aperio_assets.state.parquet_tracker import open_state_table
from aperio_assets.state.spec import DELETED, TableSpec
from aperio_assets.state.table import StateTable
from aperio_assets.state.tables import CONVERSIONS, PARTITION_STATUS, TABLE_COMPLETION, VIEWS

Row = dict[str, Any]
Key = tuple[str, ...]
SPECS: dict[str, TableSpec] = {spec.name: spec for spec in (PARTITION_STATUS, TABLE_COMPLETION, CONVERSIONS, VIEWS)}


class StateAccess(ABC):
    """The current rows of one state table, and batched writes to it."""

    spec: TableSpec
    mode: str

    @abstractmethod
    def rows(self) -> list[Row]:
        """Every current row (deduplicated, tombstones hidden), with the spec's columns."""

    @abstractmethod
    def apply(self, upserts: Sequence[Row] = (), deletes: Sequence[Key] = ()) -> None:
        """Write upserts and deletes; in shared mode as ONE state file."""

    def file_count(self) -> int | None:
        """How many state files the table holds now (None where that means nothing: local mode)."""
        return None

    def key(self, row: Row) -> Key:
        return tuple(row[k] for k in self.spec.keys)


class SharedStateAccess(StateAccess):
    mode = "shared"

    def __init__(self, table: StateTable) -> None:
        self.table, self.spec = table, table.spec

    def rows(self) -> list[Row]:
        columns = (*self.spec.keys, *self.spec.value_names)
        return [{c: r.get(c) for c in columns} for r in self.table.rows()]

    def apply(self, upserts: Sequence[Row] = (), deletes: Sequence[Key] = ()) -> None:
        self.table.write(upserts=upserts, deletes=deletes)

    def file_count(self) -> int:
        self.table.refresh(force=True)
        return len(self.table.readable_files()) + len(self.table.bad_files)


class LocalStatusAccess(StateAccess):
    """``partition_status`` or ``table_completion`` in the legacy DuckDB file."""

    mode = "local"

    def __init__(self, store: DuckDBPartitionStatusStore, spec: TableSpec) -> None:
        self.store, self.spec = store, spec

    def rows(self) -> list[Row]:
        return self.store.all_rows(self.spec.name)

    def apply(self, upserts: Sequence[Row] = (), deletes: Sequence[Key] = ()) -> None:
        if self.spec is PARTITION_STATUS:
            self.store.apply_status(upserts, [(k[0], k[1]) for k in deletes])
        else:
            self.store.apply_completions(upserts, [k[0] for k in deletes])


class LocalLineageAccess(StateAccess):
    """``conversions`` in the legacy ``.conversions.json`` (with its lock file)."""

    mode, spec = "local", CONVERSIONS

    def __init__(self, lineage: JsonLineage) -> None:
        self.lineage = lineage

    def rows(self) -> list[Row]:
        return list(self.lineage.records().values())

    def apply(self, upserts: Sequence[Row] = (), deletes: Sequence[Key] = ()) -> None:
        self.lineage.record_many(list(upserts))
        self.lineage.remove([k[0] for k in deletes])


def open_state(lake: Lake, schema: str | None, name: str) -> StateAccess:
    """State table ``name`` of ``schema`` (``views`` lives at the root: schema None), in the schema's
    mode. View definitions are always shared state."""
    if name not in SPECS:
        raise ValueError(f"unknown state table {name!r} (one of {', '.join(SPECS)})")
    spec = SPECS[name]
    if spec is VIEWS:
        return SharedStateAccess(shared_table(lake, lake.storage.aperio_path(None, layout.VIEWS), VIEWS))
    if schema is None:
        raise ValueError(f"state table {name} belongs to a schema")
    if lake.schema(schema).state_storage == "local":
        if spec is CONVERSIONS:
            return LocalLineageAccess(JsonLineage(lake.local_state_path(schema, layout.LEGACY_CONVERSIONS)))
        return LocalStatusAccess(
            DuckDBPartitionStatusStore(lake.local_state_path(schema, layout.LEGACY_PARTITION_STATUS)), spec
        )
    return SharedStateAccess(shared_table(lake, lake.storage.aperio_path(schema, spec.name), spec))


def shared_table(lake: Lake, directory: str, spec: TableSpec) -> StateTable:
    """The state table in ``directory``, opened once per Lake: its files are immutable, so a later
    read costs one LIST and a GET of each file it has not read yet (its own writes included)."""
    table = lake.state_tables.get(directory)
    if not isinstance(table, StateTable) or table.spec is not spec:
        table = open_state_table(lake.storage, directory, spec, lake.config.compaction)
        lake.state_tables[directory] = table
    return table


# -- Polars frames (what Dagster assets hand to and get from the IO manager) --------------------
def frame_schema(spec: TableSpec, *, with_deleted: bool = False) -> pl.Schema:
    arrow = pa.schema([pa.field(k, pa.string()) for k in spec.keys] + [pa.field(n, t) for n, t in spec.values])
    schema = pl.Schema(pl.from_arrow(arrow.empty_table()).schema)
    if with_deleted:
        schema[DELETED] = pl.Boolean
    return schema


def to_frame(spec: TableSpec, upserts: Sequence[Row] = (), deletes: Sequence[Key] = ()) -> pl.DataFrame:
    """Upserts and deletes as one frame; deletes are rows with ``_deleted`` true and only keys set."""
    columns = (*spec.keys, *spec.value_names)
    records = [{**{c: row.get(c) for c in columns}, DELETED: False} for row in upserts]
    records += [{**dict.fromkeys(columns), **dict(zip(spec.keys, key, strict=True)), DELETED: True} for key in deletes]
    return pl.DataFrame(records, schema=frame_schema(spec, with_deleted=True), orient="row")


def from_frame(spec: TableSpec, frame: pl.DataFrame) -> tuple[list[Row], list[Key]]:
    """A frame's upserts and deletes. It must hold the key columns; value columns it lacks are null,
    and a column the table does not have is an error (never dropped silently)."""
    allowed = {*spec.keys, *spec.value_names, DELETED}
    unknown = [c for c in frame.columns if c not in allowed]
    if unknown:
        raise ValueError(f"state table {spec.name} has no column(s) {', '.join(unknown)}")
    missing = [k for k in spec.keys if k not in frame.columns]
    if missing:
        raise ValueError(f"a frame for state table {spec.name} needs the key column(s) {', '.join(missing)}")
    upserts, deletes = [], []
    for row in frame.iter_rows(named=True):
        if row.pop(DELETED, False):
            deletes.append(tuple(row[k] for k in spec.keys))
        else:
            upserts.append({c: row.get(c) for c in (*spec.keys, *spec.value_names)})
    return upserts, deletes


def rows_frame(spec: TableSpec, rows: Sequence[Row]) -> pl.DataFrame:
    """Current rows as a frame with the table's columns and types (no ``_deleted``)."""
    columns = (*spec.keys, *spec.value_names)
    return pl.DataFrame([{c: r.get(c) for c in columns} for r in rows], schema=frame_schema(spec), orient="row")

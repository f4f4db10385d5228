"""The one way to reach state: one state table of one schema, in whichever mode the schema uses
(read its current rows, apply a batch of upserts and deletes), and the shared tables opened once per
``Lake``. The refresh, the trackers and their lineage, the CLI, the Dagster IO manager, the catalog,
maintenance and migration all reach state through this, so shared mode is the §5 protocol and local
mode the legacy stores, everywhere; the shared-or-local decision is :func:`is_shared`, and a Lake's
tables are opened by :func:`directory_table` alone (one ``StateTable`` per directory per Lake).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aperio_assets import layout
from aperio_assets.lake import Lake
from aperio_assets.state.lineage import JsonLineage
from aperio_assets.state.spec import TableSpec
from aperio_assets.state.table import StateTable, open_state_table
from aperio_assets.state.tables import CONVERSIONS, PARTITION_STATUS, TABLE_COMPLETION, VIEWS

if TYPE_CHECKING:
    from aperio_assets.state.duckdb_tracker import DuckDBPartitionStatusStore

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

    def file_count(self, *, fresh: bool = True) -> int | None:
        """How many state files the table holds (None where that means nothing: local mode); now
        (one LIST), or as the last read saw them (``fresh=False``)."""
        return None

    def counts(self) -> tuple[int, int | None]:
        """Current rows and state files, from one read."""
        return len(self.rows()), self.file_count(fresh=False)

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

    def file_count(self, *, fresh: bool = True) -> int:
        if fresh:
            self.table.refresh(force=True)
        return len(self.table.readable_files()) + len(self.table.bad_files)

    def counts(self) -> tuple[int, int]:
        stats = self.table.stats()  # one refresh for both
        return stats.live_rows, stats.files + len(stats.bad_files)


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


def is_shared(lake: Lake, schema: str | None) -> bool:
    """Whether ``schema``'s state is shared (the §5 protocol) or local (the legacy stores); the
    lake-wide tables (``schema`` None: the view definitions) are always shared."""
    return schema is None or lake.schema(schema).shared


def open_state(lake: Lake, schema: str | None, name: str) -> StateAccess:
    """State table ``name`` of ``schema`` (``views`` lives at the root: schema None), in the schema's
    mode. View definitions are always shared state."""
    if name not in SPECS:
        raise ValueError(f"unknown state table {name!r} (one of {', '.join(SPECS)})")
    spec = SPECS[name]
    if (spec is VIEWS) != (schema is None):
        raise ValueError(f"state table {name} " + ("is lake-wide" if spec is VIEWS else "belongs to a schema"))
    if is_shared(lake, schema):
        return SharedStateAccess(schema_table(lake, schema, spec))
    if spec is CONVERSIONS:
        return LocalLineageAccess(JsonLineage(lake.local_state_path(schema, layout.LEGACY_CONVERSIONS)))
    from aperio_assets.state.duckdb_tracker import DuckDBPartitionStatusStore  # (local mode only: DuckDB)

    return LocalStatusAccess(
        DuckDBPartitionStatusStore(lake.local_state_path(schema, layout.LEGACY_PARTITION_STATUS)), spec
    )


def state_directory(lake: Lake, schema: str | None, spec: TableSpec) -> str:
    """Where the shared state table ``spec`` of ``schema`` lives (the views: ``catalog/views``)."""
    if spec is VIEWS:
        return lake.storage.aperio_path(None, layout.VIEWS)
    return lake.storage.aperio_path(schema, spec.name)


def cached_table(lake: Lake, directory: str, spec: TableSpec) -> StateTable | None:
    """The Lake's open table of a state directory, if it has opened one."""
    table = lake.state_tables.get(directory)
    return table if isinstance(table, StateTable) and table.spec is spec else None


def directory_table(lake: Lake, directory: str, spec: TableSpec) -> StateTable:
    """The Lake's table of a state directory, opened on first use: the one per-process cache of state
    tables (per Lake: a Lake is one configuration's storage). Every user of a Lake (trackers, lineage,
    the IO manager, the catalog, maintenance) reads and writes a directory through this one table."""
    table = cached_table(lake, directory, spec)
    if table is None:
        opened = open_state_table(lake.storage, directory, spec, lake.config.compaction)
        # (setdefault: two threads opening a directory at once both get the table that was kept)
        table = lake.state_tables.setdefault(directory, opened)
        if not isinstance(table, StateTable) or table.spec is not spec:
            table = lake.state_tables[directory] = opened
    return table


def schema_table(lake: Lake, schema: str | None, spec: TableSpec) -> StateTable:
    """The shared state table ``spec`` of ``schema`` (None: lake-wide), opened once per Lake: its
    files are immutable, so a later read costs one LIST and a GET of each file it has not read yet
    (its own writes included)."""
    return directory_table(lake, state_directory(lake, schema, spec), spec)


def carry_tables(previous: Lake, lake: Lake) -> None:
    """Give ``lake`` (new) the state tables ``previous`` opened, if both have the same configuration:
    a table's files are immutable and it lists its directory on every read, so ``lake`` still sees
    every file written since and only does not fetch again the ones ``previous`` read."""
    if previous.config == lake.config:
        for directory, table in previous.state_tables.items():
            lake.state_tables.setdefault(directory, table)


def forget_tables(lake: Lake) -> None:
    """Drop the Lake's open tables: its next reads start cold, as a new process's would. (An object
    holding one of them, a tracker say, keeps it; the Lake hands out new ones.)"""
    lake.state_tables.clear()

"""The ``aperio.*`` state views (DESIGN §7): constant views, in every cache file, over one name that
each connection registers: an Arrow snapshot, taken at connect, of the current rows (§5 rule) of
every state table. A query on them never reads a state file, so compaction deleting files can never
break a query or an open connection; reconnect to see newer state."""

from __future__ import annotations

import weakref

import pyarrow as pa

from aperio_assets.catalog.fingerprint import Definitions
from aperio_assets.catalog.views import ViewDefinition
from aperio_assets.lake import Lake
from aperio_assets.sqlutil import quote_identifier
from aperio_assets.state.access import cached_table, directory_table, forget_tables
from aperio_assets.state.arrow import empty_table
from aperio_assets.state.spec import DELETED, TableSpec
from aperio_assets.state.table import StateTable
from aperio_assets.state.tables import CONVERSIONS, PARTITION_STATUS, TABLE_COMPLETION, VIEWS

SYSTEM_SCHEMA = "aperio"  # aperio.partition_status, aperio.views, …
SNAPSHOT_NAME = "__aperio_state"  # registered on every connection: one row, one list column per view
STATE_VIEWS: dict[str, TableSpec] = {
    PARTITION_STATUS.name: PARTITION_STATUS,
    TABLE_COMPLETION.name: TABLE_COMPLETION,
    CONVERSIONS.name: CONVERSIONS,
    "views": VIEWS,
}
Parts = dict[str, list[tuple[str | None, pa.Table]]]  # per view: (schema or None, its current rows)


def state_view_statements() -> list[str]:
    """The SQL creating the system schema and its views (constant: over the registered snapshot)."""
    return [f"CREATE SCHEMA {SYSTEM_SCHEMA}"] + [
        f"CREATE VIEW {SYSTEM_SCHEMA}.{quote_identifier(view)} AS SELECT "
        f"unnest({quote_identifier(view)}, recursive := true) FROM {SNAPSHOT_NAME}"
        for view in STATE_VIEWS
    ]


def snapshot_schema(view: str) -> pa.Schema:
    spec = STATE_VIEWS[view]
    fields = [f for f in spec.schema if f.name != DELETED]
    if view != "views":
        fields.insert(0, pa.field("schema_name", pa.string()))
    return pa.schema(fields)


def packed(view: str, parts: list[tuple[str | None, pa.Table]]) -> pa.Array:
    """A view's rows (every schema's part, with ``schema_name``) as a one-element list of structs."""
    schema = snapshot_schema(view)
    tables = []
    for name, rows in parts:
        if name is not None:
            rows = rows.add_column(0, "schema_name", pa.repeat(pa.scalar(name), rows.num_rows))
        tables.append(
            pa.table(
                [
                    rows[f.name].cast(f.type) if f.name in rows.column_names else pa.nulls(rows.num_rows, f.type)
                    for f in schema
                ],
                schema=schema,
            )
        )
    rows = pa.concat_tables(tables) if tables else empty_table(schema)
    structs = pa.StructArray.from_arrays([rows[f.name].combine_chunks() for f in schema], fields=list(schema))
    return pa.ListArray.from_arrays(pa.array([0, len(structs)], pa.int32()), structs)


def pack(parts: Parts) -> pa.Table:
    """The registered table: one row, one column per state view."""
    return pa.table([packed(view, parts.get(view, [])) for view in STATE_VIEWS], names=list(STATE_VIEWS))


class StateReaders:
    """This process's readers of the state tables, and what it last made of them, kept between
    connects so that a connect re-reads only what changed: a LIST per state directory, a GET per
    file not seen yet, and rows, definitions and snapshot rebuilt only when a version changed.
    A reader is the Lake's own table of its directory (``state.access``), shared with the Lake's
    trackers, lineage and IO manager; the process keeps it too, past its Lake, since
    ``open_catalog(path)`` opens a new Lake per connect. Readers live as long as the process (or
    until :meth:`clear`)."""

    def __init__(self) -> None:
        self._readers: dict[tuple[str, str], StateTable] = {}
        self._lakes: weakref.WeakSet[Lake] = weakref.WeakSet()  # whose tables the readers are
        self._rows: dict[tuple[str, str], tuple[object, pa.Table | None]] = {}
        self._definitions: dict[tuple[str, str], tuple[object, Definitions]] = {}
        # per lake: the identities of the parts the last snapshot was made of, the snapshot, and the
        # parts themselves (kept: while they live, no other object can reuse their ids)
        self._packed: dict[str, tuple[tuple[int, ...], pa.Table, Parts]] = {}

    def clear(self) -> None:
        """Forget everything, as a new process would: the Lakes' tables read through included."""
        for lake in list(self._lakes):
            forget_tables(lake)
        self._lakes.clear()
        self._readers.clear()
        self._rows.clear()
        self._definitions.clear()
        self._packed.clear()

    @staticmethod
    def _key(lake: Lake, directory: str) -> tuple[str, str]:
        endpoint = getattr(getattr(lake.storage, "settings", None), "endpoint_url", None) or ""
        return endpoint, directory

    def reader(self, lake: Lake, directory: str, spec: TableSpec) -> StateTable:
        """The process's reader of a state directory: the Lake's table (opened now if neither the
        Lake nor an earlier connect has one), else the one an earlier connect read through another
        Lake of the same endpoint (not handed to this Lake: it works through that Lake's storage).
        A connect refreshes it once (one LIST), then reads its rows with ``fresh=False`` (no second
        LIST) rather than from a reader opened with an infinite staleness: the table is shared, and
        its other users need every read fresh."""
        key = self._key(lake, directory)
        table = cached_table(lake, directory, spec)
        if table is None:
            held = self._readers.get(key)
            table = held if held is not None and held.spec is spec else directory_table(lake, directory, spec)
        self._readers[key] = table
        self._lakes.add(lake)
        return table

    def rows(self, lake: Lake, table: StateTable) -> pa.Table | None:
        """A refreshed reader's current rows (tombstones hidden), or None when it has none."""
        # The version first: a file this process writes or reads meanwhile (the table is shared)
        # then makes the next connect's version differ, and the rows are decoded again.
        key, version = self._key(lake, table.directory), table.version
        memo = self._rows.get(key)
        if memo is None or memo[0] != version:
            rows = table.to_arrow(fresh=False)
            memo = self._rows[key] = (version, rows.drop_columns([DELETED]) if rows.num_rows else None)
        return memo[1]

    def definitions(self, lake: Lake, table: StateTable) -> Definitions:
        """A refreshed views reader's definitions, decoded again only when the table changed."""
        key, version = self._key(lake, table.directory), table.version
        memo = self._definitions.get(key)
        if memo is None or memo[0] != version:
            views = [ViewDefinition.from_row(r) for r in table.rows(fresh=False)]
            memo = self._definitions[key] = (version, Definitions(views))
        return memo[1]

    def packed(self, lake: Lake, parts: Parts) -> pa.Table:
        """The snapshot of ``parts``, packed again only when one of them is a new object."""
        key = tuple(id(rows) for view_parts in parts.values() for _, rows in view_parts)
        memo = self._packed.get(lake.config.source)
        if memo is None or memo[0] != key:
            memo = self._packed[lake.config.source] = (key, pack(parts), parts)
        return memo[1]

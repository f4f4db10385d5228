"""The in-memory DuckDB catalog (DESIGN §7): one DuckDB schema per aperio schema, one view per view
definition, and ``aperio`` exposing the state itself.

DuckDB binds a view when it is created, reading its files' metadata: on S3 a LIST and a footer read
per view, which made connect cost grow with the number of views. Views loaded from a database file,
by contrast, are bound only when queried. So the table views are created once per version of the
view definitions into a machine-local cache file (``$APERIO_CACHE_DIR``, default
``~/.cache/aperio/catalog``), and every connect ATTACHes it read-only: no request per view. The cache
is disposable and derived from the shared ``catalog/views`` state, never a source of truth; the
shared state has no catalog file.

The state views (``aperio.partition_status``, …) are in the same cache file (schema ``aperio``),
each a constant view over a name that every connection registers: an Arrow snapshot, taken at
connect, of the current rows (§5 rule) that this process's state readers hold (kept per process, so
a connect costs one LIST per state directory plus a GET per file not seen yet); local-mode schemas
contribute snapshots of their legacy files. A query on them never reads a state file, so compaction
deleting files can never break a query or an open connection; reconnect to see newer state. The
connection is the cache file opened read-only (its database is named ``aperio_catalog``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from aperio_assets import layout
from aperio_assets.catalog.s3access import enable_s3
from aperio_assets.catalog.views import ViewDefinition
from aperio_assets.config import SchemaConfig, is_s3_url
from aperio_assets.lake import ConfigLike, Lake, open_lake
from aperio_assets.sqlutil import quote_identifier
from aperio_assets.state.duckdb_tracker import DuckDBPartitionStatusStore
from aperio_assets.state.lineage import COLUMNS as LINEAGE_COLUMNS
from aperio_assets.state.lineage import JsonLineage
from aperio_assets.state.parquet_tracker import open_state_table
from aperio_assets.state.spec import DELETED, TableSpec
from aperio_assets.state.table import StateTable
from aperio_assets.state.tables import CONVERSIONS, PARTITION_STATUS, TABLE_COMPLETION, VIEWS
from aperio_assets.storage import S3Storage

log = logging.getLogger(__name__)
SYSTEM_SCHEMA = "aperio"  # an in-memory catalog: aperio.partition_status, aperio.views, …
TABLES_CATALOG = "aperio_catalog"  # the cache file's database: the connection's default
CACHE_ENV = "APERIO_CACHE_DIR"


_STATE_TABLES: dict[tuple[str, str, str], StateTable] = {}
_STATE_TABLES_LOCK = threading.Lock()
# Per state reader: its version and its current rows (resolved again only on a change).
_READER_ROWS: dict[int, tuple[object, pa.Table | None]] = {}
# The parts the last snapshot was made of, and the snapshot (made again only on a change).
_PACKED_STATE: dict[str, tuple[tuple[int, ...], pa.Table, object]] = {}
SNAPSHOT_NAME = "__aperio_state"  # registered on every connection: one row, one list column per view
STATE_VIEWS = {
    PARTITION_STATUS.name: PARTITION_STATUS,
    TABLE_COMPLETION.name: TABLE_COMPLETION,
    CONVERSIONS.name: CONVERSIONS,
    "views": VIEWS,
}


def _packed(view: str, parts: list[tuple[str | None, pa.Table]]) -> pa.Array:
    """A view's rows (every schema's part, with ``schema_name``) as a one-element list of structs."""
    schema = _snapshot_schema(view)
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
    rows = pa.concat_tables(tables) if tables else schema.empty_table()
    structs = pa.StructArray.from_arrays([rows[f.name].combine_chunks() for f in schema], fields=list(schema))
    return pa.ListArray.from_arrays(pa.array([0, len(structs)], pa.int32()), structs)


def _snapshot_schema(view: str) -> pa.Schema:
    spec = STATE_VIEWS[view]
    fields = [f for f in spec.schema if f.name != DELETED]
    if view != "views":
        fields.insert(0, pa.field("schema_name", pa.string()))
    return pa.schema(fields)


# Per views directory: the views table's version and its decoded definitions.
_DEFINITIONS: dict[str, tuple[object, list[ViewDefinition]]] = {}


def _state_table(lake: Lake, directory: str, spec: TableSpec) -> StateTable:
    """This process's reader of a state directory, refreshed: one LIST plus a GET per new file."""
    endpoint = getattr(getattr(lake.storage, "settings", None), "endpoint_url", None) or ""
    key = (endpoint, directory, spec.name)
    with _STATE_TABLES_LOCK:
        table = _STATE_TABLES.get(key)
        if table is None:
            table = _STATE_TABLES[key] = open_state_table(lake.storage, directory, spec, lake.config.compaction)
    table.refresh(force=True)
    return table


@dataclass
class CatalogReport:
    views: int = 0
    broken: dict[str, str] = field(default_factory=dict)  # "schema.view" → why it did not register
    s3_access: str | None = None
    seconds: float = 0.0
    # "hit" (attached a prepared catalog), "built" (views were bound this time) or "rebuilt" (a view
    # the prepared catalog had found broken binds now, so all were bound again)
    cache: str = ""


def first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def bind_error(con: duckdb.DuckDBPyConnection, definition: ViewDefinition) -> str | None:
    """Why ``definition`` does not bind in ``con`` now (None if it does): bound as a temporary view,
    then dropped, so a read-only catalog can be asked too."""
    name = quote_identifier(f"__aperio_bind_{uuid.uuid4().hex}")
    cursor = con.cursor()
    try:
        cursor.execute(f"CREATE TEMP VIEW {name} AS {definition.sql}")
        cursor.execute(f"DROP VIEW temp.main.{name}")
        return None
    except duckdb.Error as exc:
        return first_line(exc)
    finally:
        cursor.close()


class _Builder:
    def __init__(self, lake: Lake, workers: int) -> None:
        self.lake, self.workers = lake, workers
        self.con: duckdb.DuckDBPyConnection | None = None
        self.report = CatalogReport()
        self.s3_storage: S3Storage | None = None
        self._tables: dict[str, StateTable] = {}

    def _table(self, directory: str, spec: TableSpec) -> StateTable:
        """A state table, refreshed once per connect (the views table is read twice)."""
        if directory not in self._tables:
            self._tables[directory] = _state_table(self.lake, directory, spec)
        return self._tables[directory]

    def _shared_snapshot(self, directory: str, spec: TableSpec) -> pa.Table | None:
        """A state directory's current rows (§5 rule, tombstones hidden), from this process's reader."""
        table = self._table(directory, spec)
        version = table.version
        memo = _READER_ROWS.get(id(table))  # readers are kept for the process's life: ids are stable
        if memo is None or memo[0] != version:
            rows = table.to_arrow()
            memo = _READER_ROWS[id(table)] = (version, rows.drop_columns([DELETED]) if rows.num_rows else None)
        return memo[1]

    def _local_snapshot(self, schema: SchemaConfig, spec: TableSpec) -> pa.Table | None:
        """A snapshot of a local-mode schema's legacy files, read without holding their locks."""
        arrow_schema = pa.schema([f for f in spec.schema if f.name in spec.keys or f.name in spec.value_names])
        if spec is CONVERSIONS:
            path = self.lake.local_state_path(schema.name, layout.LEGACY_CONVERSIONS)
            if not os.path.exists(path):
                return None
            rows = [{c: r.get(c) for c in LINEAGE_COLUMNS} for r in JsonLineage(path).records().values()]
        else:
            path = self.lake.local_state_path(schema.name, layout.LEGACY_PARTITION_STATUS)
            if not os.path.exists(path):
                return None
            rows = DuckDBPartitionStatusStore(path).all_rows(spec.name)
        return pa.Table.from_pylist(rows, schema=arrow_schema)

    def _parts(self) -> dict[str, list[tuple[str | None, pa.Table]]]:
        """Per ``aperio.*`` view: (schema, current rows) of every state table that has rows."""
        snapshots: dict[str, list[tuple[str | None, pa.Table]]] = {}
        for spec in (PARTITION_STATUS, TABLE_COMPLETION, CONVERSIONS):
            parts = snapshots.setdefault(spec.name, [])
            for schema in self.lake.schemas():
                if schema.state_storage == "shared":
                    rows = self._shared_snapshot(self.lake.storage.aperio_path(schema.name, spec.name), spec)
                else:
                    rows = self._local_snapshot(schema, spec)
                if rows is not None:
                    parts.append((schema.name, rows))
        views = self._shared_snapshot(self.lake.storage.aperio_path(None, layout.VIEWS), VIEWS)
        snapshots["views"] = [(None, views)] if views is not None else []
        return snapshots

    def register_state(self, con: duckdb.DuckDBPyConnection) -> None:
        """Register this connect's snapshot of every state table, as the one table the views read:
        one row whose column per view holds that view's rows as a list of structs (one registration
        costs a connect a fraction of a millisecond; one per view cost four times that)."""
        parts = self._parts()
        key = tuple(id(rows) for view_parts in parts.values() for _, rows in view_parts)
        memo = _PACKED_STATE.get(self.lake.config.source)
        if memo is None or memo[0] != key:
            columns = [_packed(view, parts[view]) for view in STATE_VIEWS]
            # (the parts are kept with it: while they live, no other object can reuse their ids)
            memo = _PACKED_STATE[self.lake.config.source] = (key, pa.table(columns, names=list(STATE_VIEWS)), parts)
        con.register(SNAPSHOT_NAME, memo[1])

    def definitions(self) -> list[ViewDefinition]:
        """The view definitions, decoded again only when the views table changed."""
        table = self._table(self.lake.storage.aperio_path(None, layout.VIEWS), VIEWS)
        version = table.version
        memo = _DEFINITIONS.get(table.directory)
        if memo is None or memo[0] != version:
            memo = _DEFINITIONS[table.directory] = (
                version,
                sorted((ViewDefinition.from_row(r) for r in table.rows()), key=lambda v: (v.schema_name, v.view_name)),
            )
        return memo[1]

    def connect(self, s3_access: str) -> duckdb.DuckDBPyConnection:
        names = sorted(s.name for s in self.lake.schemas())
        definitions = self.definitions()
        for view in definitions:
            if view.schema_name not in names:
                self.report.broken[f"{view.schema_name}.{view.view_name}"] = "its schema is not in the configuration"
        definitions = [v for v in definitions if v.schema_name in names]
        cache = _cache_path(names, definitions)
        sidecar = cache.with_suffix(".json")
        try:
            broken = json.loads(sidecar.read_text())
            self._attach(cache, s3_access)
            self.report.cache = "hit"
        except (OSError, ValueError, duckdb.Error):
            broken = self._build(cache, sidecar, names, definitions, s3_access)
            self._attach(cache, s3_access)
            self.report.cache = "built"
        if self.report.cache == "hit" and broken and self._any_binds_now(broken, definitions):
            # The cache remembers views that did not bind when it was built (their files were
            # missing); one that binds now would stay missing until the definitions change: rebuild.
            self.con.close()
            broken = self._build(cache, sidecar, names, definitions, s3_access)
            self._attach(cache, s3_access)
            self.report.cache = "rebuilt"
        self.report.broken.update(broken)
        self.report.views = sum(1 for v in definitions if f"{v.schema_name}.{v.view_name}" not in broken)
        return self.con

    def _attach(self, cache: Path, s3_access: str) -> None:
        self.con = _open(cache)
        self.register_state(self.con)
        if self.s3_storage is not None:
            self.report.s3_access = enable_s3(self.con, self.s3_storage, method=s3_access)
            # On S3 a footer or a HEAD is a request: fetch them once per connection, not per query.
            # (On local disk the OS caches them, and the SET would cost every connect a statement.)
            self.con.execute("SET parquet_metadata_cache = true")
            self.con.execute("SET enable_http_metadata_cache = true")

    def _any_binds_now(self, broken: dict[str, str], definitions: list[ViewDefinition]) -> bool:
        assert self.con is not None
        by_key = {f"{v.schema_name}.{v.view_name}": v for v in definitions}
        return any(bind_error(self.con, by_key[key]) is None for key in broken if key in by_key)

    def _build(
        self, cache: Path, sidecar: Path, names: list[str], definitions: list[ViewDefinition], s3_access: str
    ) -> dict[str, str]:
        """Bind every view once, into a new cache file (written aside, then renamed into place)."""
        cache.parent.mkdir(parents=True, exist_ok=True)
        temp = cache.with_name(f".{cache.stem}.{uuid.uuid4().hex}.duckdb")
        scratch = duckdb.connect(str(temp))
        try:
            if self.s3_storage is not None:
                enable_s3(scratch, self.s3_storage, method=s3_access)
            for name in names:
                scratch.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(name)}")
            # The state views: constant, over the names each connection registers its snapshot under
            # (registered here too, so that user views reading the state bind).
            self.register_state(scratch)
            scratch.execute(f"CREATE SCHEMA {SYSTEM_SCHEMA}")
            for view in STATE_VIEWS:
                scratch.execute(
                    f"CREATE VIEW {SYSTEM_SCHEMA}.{quote_identifier(view)} AS SELECT "
                    f"unnest({quote_identifier(view)}, recursive := true) FROM {SNAPSHOT_NAME}"
                )
            # Generated views first (user views may read them), in parallel: each binds its files.
            failed = self._register_all(scratch, [v for v in definitions if v.origin == "generated"], parallel=True)
            rest = [v for v in definitions if v.origin != "generated"]
            still: list[tuple[ViewDefinition, str]] = []
            for _ in range(len(rest) + 1):  # user views may depend on each other: retry while that helps
                still = self._register_all(scratch, rest, parallel=False)
                if len(still) == len(rest):
                    break
                rest = [v for v, _ in still]
            broken = {f"{v.schema_name}.{v.view_name}": error for v, error in [*failed, *still]}
        finally:
            scratch.close()
        sidecar.write_text(json.dumps(broken))
        os.replace(temp, cache)
        return broken

    def _register(self, con: duckdb.DuckDBPyConnection, view: ViewDefinition) -> str | None:
        cursor = con.cursor()
        try:
            cursor.execute(
                f"CREATE OR REPLACE VIEW {quote_identifier(view.schema_name)}."
                f"{quote_identifier(view.view_name)} AS {view.sql}"
            )
            return None
        except duckdb.Error as exc:
            return first_line(exc)
        finally:
            cursor.close()

    def _register_all(
        self, con: duckdb.DuckDBPyConnection, views: list[ViewDefinition], *, parallel: bool
    ) -> list[tuple[ViewDefinition, str]]:
        """Create the views; returns those that did not bind, with the reason."""
        if parallel and len(views) > 1:
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                errors = list(pool.map(lambda v: self._register(con, v), views))
        else:
            errors = [self._register(con, v) for v in views]
        return [(v, e) for v, e in zip(views, errors, strict=True) if e is not None]


def _open(cache: Path) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(cache), read_only=True)


def cache_directory() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "aperio" / "catalog"


def _cache_path(schemas: list[str], definitions: list[ViewDefinition]) -> Path:
    """One cache file per version of everything the views' binding depends on."""
    return cache_directory() / _fingerprint(tuple(schemas), tuple(definitions)) / f"{TABLES_CATALOG}.duckdb"


@functools.lru_cache(maxsize=64)
def _fingerprint(schemas: tuple[str, ...], definitions: tuple[ViewDefinition, ...]) -> str:
    return hashlib.sha256(
        json.dumps(
            {
                "duckdb": duckdb.__version__,
                "schemas": schemas,
                "state": "snapshots",
                "views": [[v.schema_name, v.view_name, v.sql, v.origin, list(v.columns)] for v in definitions],
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:32]


def open_catalog(
    config_or_path: ConfigLike | Lake = None, *, s3_access: str = "auto", workers: int = 8
) -> tuple[duckdb.DuckDBPyConnection, CatalogReport]:
    """:func:`connect`, plus a report: views registered, views that did not bind (and why), how S3
    is read."""
    started = time.perf_counter()
    lake = open_lake(config_or_path)
    builder = _Builder(lake, workers)
    if is_s3_url(lake.config.aperio_directory) or is_s3_url(lake.config.base_directory):
        storage = lake.storage if isinstance(lake.storage, S3Storage) else lake.lake_storage
        assert isinstance(storage, S3Storage)
        builder.s3_storage = storage
    con = builder.connect(s3_access)
    for key, error in builder.report.broken.items():
        log.warning("view %s did not register: %s", key, error)
    builder.report.seconds = time.perf_counter() - started
    return con, builder.report


def connect(config_or_path: ConfigLike | Lake = None, *, s3_access: str = "auto") -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with every table of the lake as a view and the state under ``aperio``."""
    return open_catalog(config_or_path, s3_access=s3_access)[0]

"""The DuckDB catalog (DESIGN §7), views bound into a machine-local cache file: one DuckDB schema
per aperio schema, one view per view definition, and ``aperio`` exposing the state itself.

A connect reads the view definitions and the state tables through this process's readers (a LIST
per state directory, a GET per file not seen yet: :mod:`.snapshot`), finds the machine-local cache
file bound from those definitions (:mod:`.cache`, named by :mod:`.fingerprint`), builds it if there
is none (binding only what changed since the lake's last one: :mod:`.binding`), and opens it
read-only with this connect's state snapshot registered. Local-mode schemas contribute snapshots of
their legacy files (:mod:`.legacy`). The connection's database is the cache file (``aperio_catalog``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import duckdb

from aperio_assets.catalog.binding import bind_error, first_line
from aperio_assets.catalog.cache import (
    PROCESS_CACHE,
    TABLES_CATALOG,
    CacheEntry,
    CacheFiles,
    ProcessCache,
    cache_directory,
)
from aperio_assets.catalog.fingerprint import Definitions, lake_key, view_key
from aperio_assets.catalog.legacy import local_snapshot
from aperio_assets.catalog.s3access import enable_s3
from aperio_assets.catalog.snapshot import SNAPSHOT_NAME, SYSTEM_SCHEMA, Parts, StateReaders
from aperio_assets.catalog.views import ViewDefinition, views_directory
from aperio_assets.config import is_s3_url
from aperio_assets.lake import ConfigLike, Lake, open_lake
from aperio_assets.state.access import is_shared, state_directory
from aperio_assets.state.spec import TableSpec
from aperio_assets.state.table import StateTable
from aperio_assets.state.tables import CONVERSIONS, PARTITION_STATUS, TABLE_COMPLETION, VIEWS
from aperio_assets.storage import S3Storage

__all__ = [
    "SYSTEM_SCHEMA",
    "TABLES_CATALOG",
    "CatalogReport",
    "bind_error",
    "cache_directory",
    "connect",
    "first_line",
    "open_catalog",
]

log = logging.getLogger(__name__)


@dataclass
class CatalogReport:
    views: int = 0
    broken: dict[str, str] = field(default_factory=dict)  # "schema.view" → why it did not register
    s3_access: str | None = None
    seconds: float = 0.0
    # "hit" (opened a prepared cache file), "built" (a new one was made for these definitions) or
    # "rebuilt" (a view the prepared one had found broken binds now, so it was made again)
    cache: str = ""
    bound: list[str] = field(default_factory=list)  # views bound (or tried) by this connect, sorted


class _Connect:
    """One connect: each state table refreshed at most once, the cache file found or built, opened."""

    def __init__(self, lake: Lake, workers: int, process: ProcessCache, files: CacheFiles) -> None:
        self.lake, self.workers, self.process, self.files = lake, workers, process, files
        self.readers: StateReaders = process.state
        endpoint = getattr(getattr(lake.storage, "settings", None), "endpoint_url", None) or ""
        self.lake_key = lake_key(endpoint, views_directory(lake))
        self.report = CatalogReport()
        self.s3_storage: S3Storage | None = None
        self.s3_access = "auto"
        self._refreshed: dict[str, StateTable] = {}

    def _table(self, directory: str, spec: TableSpec) -> StateTable:
        if directory not in self._refreshed:
            table = self.readers.reader(self.lake, directory, spec)
            table.refresh(force=True)
            self._refreshed[directory] = table
        return self._refreshed[directory]

    def definitions(self) -> Definitions:
        return self.readers.definitions(self.lake, self._table(views_directory(self.lake), VIEWS))

    def _parts(self) -> Parts:
        """Per ``aperio.*`` view: (schema, current rows) of every state table that has rows."""
        parts: Parts = {}
        for spec in (PARTITION_STATUS, TABLE_COMPLETION, CONVERSIONS):
            found = parts.setdefault(spec.name, [])
            for schema in self.lake.schemas():
                if is_shared(self.lake, schema.name):
                    directory = state_directory(self.lake, schema.name, spec)
                    rows = self.readers.rows(self.lake, self._table(directory, spec))
                else:
                    rows = local_snapshot(self.lake, schema, spec)
                if rows is not None:
                    found.append((schema.name, rows))
        views = self.readers.rows(self.lake, self._table(views_directory(self.lake), VIEWS))
        parts["views"] = [(None, views)] if views is not None else []
        return parts

    def register_state(self, con: duckdb.DuckDBPyConnection) -> None:
        """Register this connect's snapshot of every state table, as the one table the state views
        read (one registration costs a connect a fraction of a millisecond; one per view cost four
        times that)."""
        con.register(SNAPSHOT_NAME, self.readers.packed(self.lake, self._parts()))

    def _ready(self, con: duckdb.DuckDBPyConnection) -> None:
        """What every connection on a cache file needs: the state snapshot and S3 access."""
        self.register_state(con)
        if self.s3_storage is not None:
            self.report.s3_access = enable_s3(con, self.s3_storage, method=self.s3_access)
            # On S3 a footer or a HEAD is a request: fetch them once per connection, not per query.
            # (On local disk the OS caches them, and the SET would cost every connect a statement.)
            con.execute("SET parquet_metadata_cache = true")
            con.execute("SET enable_http_metadata_cache = true")

    def _prepare_scratch(self, con: duckdb.DuckDBPyConnection) -> None:
        if self.s3_storage is not None:
            enable_s3(con, self.s3_storage, method=self.s3_access)
        # registered here too, so that user views reading the state bind
        self.register_state(con)

    def _open(self, entry: CacheEntry) -> duckdb.DuckDBPyConnection:
        if self.s3_storage is None:
            con = self.process.catalogs.connect(self.lake_key, entry.database)
        else:
            con = duckdb.connect(str(entry.database), read_only=True)
        try:
            self._ready(con)
        except BaseException:
            con.close()
            raise
        return con

    def _build(
        self,
        fingerprint: str,
        views: list[ViewDefinition],
        digests: list[str],
        names: list[str],
        base: CacheEntry | None,
    ) -> CacheEntry:
        result = self.files.build(
            fingerprint,
            self.lake_key,
            names,
            views,
            digests,
            base=base if base is not None else self.files.latest(self.lake_key),
            prepare=self._prepare_scratch,
            workers=self.workers,
        )
        self.report.bound = result.bound
        return result.entry

    def run(self) -> duckdb.DuckDBPyConnection:
        names = sorted(s.name for s in self.lake.schemas())
        selection = self.definitions().select(names)
        for key in selection.unconfigured:
            self.report.broken[key] = "its schema is not in the configuration"
        views, digests, fingerprint = selection.views, selection.digests, selection.fingerprint
        entry = self.files.entry(fingerprint)
        con = None
        if entry is not None:
            try:
                con = self._open(entry)
                self.report.cache = "hit"
            except duckdb.Error:  # its file is gone or unreadable: build again
                entry = None
        if con is None or entry is None:
            entry = self._build(fingerprint, views, digests, names, None)
            con = self._open(entry)
            self.report.cache = "built"
        elif entry.broken and self._any_binds_now(con, entry.broken, views):
            # The cache remembers views that did not bind when it was built (their files were
            # missing); one that binds now would stay missing until the definitions change: bind
            # those again, into a new build of the same definitions.
            con.close()
            entry = self._build(fingerprint, views, digests, names, entry)
            con = self._open(entry)
            self.report.cache = "rebuilt"
        self.report.broken.update(entry.broken)
        self.report.views = sum(1 for v in views if view_key(v) not in entry.broken)
        return con

    @staticmethod
    def _any_binds_now(con: duckdb.DuckDBPyConnection, broken: dict[str, str], views: list[ViewDefinition]) -> bool:
        by_key = {view_key(v): v for v in views}
        return any(bind_error(con, by_key[key]) is None for key in broken if key in by_key)


def open_catalog(
    config_or_path: ConfigLike | Lake = None, *, s3_access: str = "auto", workers: int = 8
) -> tuple[duckdb.DuckDBPyConnection, CatalogReport]:
    """:func:`connect`, plus a report: views registered, views that did not bind (and why), how S3
    is read, whether the cache file was there, which views this connect bound."""
    started = time.perf_counter()
    lake = open_lake(config_or_path)
    attempt = _Connect(lake, workers, PROCESS_CACHE, CacheFiles())
    attempt.s3_access = s3_access
    if is_s3_url(lake.config.aperio_directory) or is_s3_url(lake.config.base_directory):
        storage = lake.storage if isinstance(lake.storage, S3Storage) else lake.lake_storage
        assert isinstance(storage, S3Storage)
        attempt.s3_storage = storage
    con = attempt.run()
    for key, error in attempt.report.broken.items():
        log.warning("view %s did not register: %s", key, error)
    attempt.report.seconds = time.perf_counter() - started
    return con, attempt.report


def connect(config_or_path: ConfigLike | Lake = None, *, s3_access: str = "auto") -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with every table of the lake as a view and the state under ``aperio``."""
    return open_catalog(config_or_path, s3_access=s3_access)[0]

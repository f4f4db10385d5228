"""The state-table protocol (DESIGN §5), written once and used by every kind of aperio state.

A state table is a directory of immutable Parquet files. Each write is one new, uniquely named file
created with create-if-absent; a row's version is ``(_ts, _writer)`` and the greatest wins per key;
``_deleted`` rows are tombstones. A reader keeps every file it has read as an Arrow *segment* and
refreshes with one LIST plus a GET per file it has not read yet.

Compaction writes the winners of the files it read into one new file that names them in its Parquet
metadata (``aperio.supersedes``). From then on those inputs are *superseded*: readers that have the
compacted file skip them (no GET), and they count as neither live nor small files. They are deleted
only once they have been superseded for the grace period (``compaction.grace_period``), like Delta's
vacuum, so that a reader or a DuckDB query that listed them a moment before never finds them gone.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aperio_assets.errors import AperioError, StorageError
from aperio_assets.state.arrow import empty_table, int64_scalar, string_array, string_scalar, true_array
from aperio_assets.state.clock import PROCESS_CLOCK, HybridClock, writer_id
from aperio_assets.state.spec import DELETED, TS, WRITER, TableSpec
from aperio_assets.storage import FileInfo, StorageProvider

if TYPE_CHECKING:
    from aperio_assets.config import CompactionSettings

log = logging.getLogger(__name__)

KEY_SEPARATOR = "\x00"  # joins multi-column keys; canonical keys never hold a raw NUL
DATA_SUFFIX = ".parquet"
COMPACTED_SUFFIX = ".compacted.parquet"
ROW_GROUP_SIZE = 8192
MAX_LIST_ROUNDS = 20  # a listed file vanishing (compacted away) means: list again
SUPERSEDES_METADATA = b"aperio.supersedes"  # a compacted file's inputs (JSON list of file names)
DEFAULT_GRACE_SECONDS = 3600
_sequence = itertools.count()
_fetch_pool: ThreadPoolExecutor | None = None
_fetch_pool_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """One pool for every table's GETs: starting threads per refresh costs more than a cold read."""
    global _fetch_pool
    with _fetch_pool_lock:
        if _fetch_pool is None:
            _fetch_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="aperio-fetch")
        return _fetch_pool


def _reset_pool_after_fork() -> None:
    global _fetch_pool, _fetch_pool_lock
    _fetch_pool, _fetch_pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_reset_pool_after_fork)

Key = tuple[str, ...]
Row = dict[str, Any]


class BadStateFile(AperioError):
    """A file in a state directory that is not valid Parquet or lacks the required columns."""


@dataclass
class Segment:
    """One file's rows, with a precomputed composite key column for vectorized lookups."""

    name: str
    table: pa.Table
    keys: pa.Array
    size: int
    max_ts: int
    supersedes: frozenset[str] = frozenset()

    @property
    def compacted(self) -> bool:
        return self.name.endswith(COMPACTED_SUFFIX)


@dataclass(frozen=True)
class CompactionResult:
    table: str
    files_read: int
    files_deleted: int  # superseded files past the grace period, deleted now (this or earlier runs' inputs)
    rows_written: int
    tombstones_dropped: int
    output: str | None
    files_kept: int = 0  # superseded files still within the grace period, deleted by a later compaction
    files_after: int = 0  # live files once this compaction is done


@dataclass
class TableStats:
    table: str
    live_rows: int
    tombstones: int
    files: int
    small_files: int
    bytes: int
    bad_files: dict[str, str] = field(default_factory=dict)
    superseded_files: int = 0  # compacted away, awaiting deletion after the grace period


def composite_key(key: Key | str) -> str:
    return key if isinstance(key, str) else KEY_SEPARATOR.join(key)


_SEPARATOR = string_scalar(KEY_SEPARATOR)


def _composite_column(table: pa.Table, keys: Sequence[str]) -> pa.Array:
    if len(keys) == 1:
        return table[keys[0]].combine_chunks()
    return pc.binary_join_element_wise(*(table[k] for k in keys), _SEPARATOR).combine_chunks()


def resolve(table: pa.Table, keys: Sequence[str]) -> tuple[pa.Table, pa.Array]:
    """The winning row per key (greatest ``(_ts, _writer)``) and, aligned with it, whether that row
    was the only one its key had."""
    if table.num_rows == 0:
        return table, pa.nulls(0, pa.bool_())
    work = table.append_column("__key", _composite_column(table, keys))
    work = work.sort_by([("__key", "ascending"), (TS, "descending"), (WRITER, "descending")])
    k = work["__key"].combine_chunks()
    n = len(k)
    if n == 1:
        return work.drop_columns(["__key"]), true_array()
    differs = pc.not_equal(k.slice(1), k.slice(0, n - 1))
    first = pa.concat_arrays([true_array(), differs])
    last = pa.concat_arrays([differs, true_array()])
    winners = work.filter(first).drop_columns(["__key"])
    sole = pc.and_(first, last).filter(first)
    return winners, sole


def parquet_bytes(table: pa.Table, supersedes: Iterable[str] = ()) -> bytes:
    names = sorted(supersedes)
    if names:
        table = table.replace_schema_metadata({SUPERSEDES_METADATA: json.dumps(names).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=ROW_GROUP_SIZE, write_statistics=True)
    return sink.getvalue().to_pybytes()


class StateTable:
    """One state table directory. Thread-safe; one instance per process and table is the intent."""

    def __init__(
        self,
        storage: StorageProvider,
        directory: str,
        spec: TableSpec,
        *,
        clock: HybridClock | None = None,
        writer: str | None = None,
        max_small_files: int = 64,
        tombstone_retention_seconds: int = 7 * 86400,
        max_staleness_seconds: float = 0.0,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        self.storage = storage
        self.directory = directory.rstrip("/")
        self.spec = spec
        self.clock = clock or PROCESS_CLOCK
        self.writer = writer or writer_id()
        self.max_small_files = max_small_files
        self.tombstone_retention_us = tombstone_retention_seconds * 1_000_000
        self.max_staleness_seconds = max_staleness_seconds
        self.grace_seconds = grace_seconds
        self._schema = spec.schema
        self._columns = frozenset(self._schema.names)
        self._value_names = spec.value_names
        self._required = spec.required  # a tuple: messages list the columns in order
        self._segments: dict[str, Segment] = {}
        # superseded file name → when it was superseded (the superseding file's mtime), while listed
        self._superseded: dict[str, float] = {}
        self.bad_files: dict[str, str] = {}
        self._last_refresh = float("-inf")
        self._lock = threading.RLock()

    # -- parsing ---------------------------------------------------------------------------------
    def _segment(self, name: str, table: pa.Table, size: int, supersedes: Iterable[str] = ()) -> Segment:
        metadata = table.schema.metadata or {}
        if SUPERSEDES_METADATA in metadata:
            try:
                supersedes = [str(n) for n in json.loads(metadata[SUPERSEDES_METADATA])]
            except (ValueError, TypeError):
                raise BadStateFile("unreadable aperio.supersedes metadata") from None
            table = table.replace_schema_metadata(None)
        keys = _composite_column(table, self.spec.keys)
        if pc.count_distinct(keys).as_py() != len(keys):
            # Files aperio writes hold one row per key; resolve anything else on the way in.
            table, _ = resolve(table, self.spec.keys)
            keys = _composite_column(table, self.spec.keys)
        max_ts = pc.max(table[TS]).as_py() if table.num_rows else 0
        return Segment(name, table, keys, size, max_ts or 0, frozenset(supersedes))

    def parse(self, name: str, data: bytes) -> pa.Table:
        """Read one state file into the table's schema (extra columns are kept); BadStateFile if
        it is not valid Parquet or lacks a required column."""
        try:
            # ParquetFile, single-threaded: files are read in parallel one level up, and Arrow's
            # dataset layer (with its own thread pools) is not needed for one in-memory file.
            table = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
        except Exception as exc:
            raise BadStateFile(f"not a valid Parquet file ({type(exc).__name__}: {exc})") from None
        names = set(table.column_names)
        missing = [c for c in self._required if c not in names]
        if missing:
            raise BadStateFile(f"missing required column(s) {', '.join(missing)}")
        if table.schema.equals(self._schema):  # what aperio writes: only the nulls check is left
            for name_ in self._required:
                if table[name_].null_count:
                    raise BadStateFile(f"column {name_} has nulls")
            return table
        columns, fields = [], []
        for target in self._schema:
            if target.name in names:
                column = table[target.name]
                if target.name in self._required and column.null_count:
                    raise BadStateFile(f"column {target.name} has nulls")
                if column.type != target.type:
                    try:
                        column = column.cast(target.type)
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                        raise BadStateFile(
                            f"column {target.name} has type {column.type}, expected {target.type}"
                        ) from None
            else:
                column = pa.nulls(table.num_rows, target.type)
            columns.append(column)
            fields.append(pa.field(target.name, target.type))
        for name_ in table.column_names:  # columns a newer writer added: carried, never dropped
            if name_ not in self._schema.names:
                columns.append(table[name_])
                fields.append(table.schema.field(name_))
        return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=table.schema.metadata))

    # -- refresh ---------------------------------------------------------------------------------
    def _fetch(self, infos: list[FileInfo]) -> tuple[list[Segment], list[str]]:
        """GET and parse files (in parallel when several); returns segments and vanished names."""

        def one(info: FileInfo) -> Segment | str | BadStateFile:
            try:
                data = self.storage.read_bytes(info.path)
            except FileNotFoundError:
                return info.name
            try:
                return self._segment(info.name, self.parse(info.name, data), len(data))
            except BadStateFile as exc:
                return exc

        results = list(_pool().map(one, infos)) if len(infos) > 2 else [one(info) for info in infos]
        segments, vanished = [], []
        for info, result in zip(infos, results, strict=True):
            if isinstance(result, Segment):
                segments.append(result)
            elif isinstance(result, BadStateFile):
                if info.name not in self.bad_files:
                    log.warning("skipping unreadable state file %s: %s", info.path, result)
                self.bad_files[info.name] = str(result)
            else:
                vanished.append(result)
        return segments, vanished

    def _adopt(self, segments: list[Segment], listed: Mapping[str, FileInfo]) -> None:
        """Hold newly read segments; what a compacted one supersedes is dropped (and never fetched)."""
        for segment in segments:
            self._segments[segment.name] = segment
            self.clock.observe(segment.max_ts)
            info = listed.get(segment.name)
            when = info.mtime if info is not None else time.time()
            for name in segment.supersedes:
                self._superseded[name] = min(when, self._superseded.get(name, when))
        for name in [n for n in self._segments if n in self._superseded]:
            del self._segments[name]

    def refresh(self, *, force: bool = False) -> None:
        """One LIST, then a GET of each file not read yet (compacted files first: the files they
        supersede need no GET); forget files that were compacted away."""
        with self._lock:
            if not force and time.monotonic() - self._last_refresh < self.max_staleness_seconds:
                return
            for _ in range(MAX_LIST_ROUNDS):
                listed = {e.name: e for e in self.storage.list(self.directory) if not e.is_dir}
                new = []
                for name, info in listed.items():
                    if name in self._segments or name in self.bad_files or name in self._superseded:
                        continue
                    if not name.endswith(DATA_SUFFIX) or name.startswith((".", "_")):
                        if name not in self.bad_files:
                            log.warning("skipping foreign file in state directory: %s", info.path)
                        self.bad_files[name] = "not a state file (name does not end in .parquet)"
                        continue
                    new.append(info)
                compacted = [i for i in new if i.name.endswith(COMPACTED_SUFFIX)]
                segments, vanished = self._fetch(compacted)
                self._adopt(segments, listed)
                rest = [i for i in new if not i.name.endswith(COMPACTED_SUFFIX) and i.name not in self._superseded]
                segments, gone = self._fetch(rest)
                self._adopt(segments, listed)
                if not vanished and not gone:
                    break
            else:
                raise StorageError(
                    f"state table {self.directory} kept changing while being read "
                    f"({MAX_LIST_ROUNDS} listings); try again"
                )
            # Every listed file is loaded, so the rows of files that vanished (compacted away) are
            # represented by the compaction output we now hold: drop them.
            for held in (self._segments, self.bad_files, self._superseded):
                for name in [n for n in held if n not in listed]:
                    del held[name]
            self._last_refresh = time.monotonic()

    # -- reads -----------------------------------------------------------------------------------
    @staticmethod
    def _newer(a: Row | None, b: Row) -> bool:
        return a is None or (b[TS], b[WRITER]) > (a[TS], a[WRITER])

    def _key(self, key: Key | str) -> Key:
        key = (key,) if isinstance(key, str) else tuple(key)
        if len(key) != len(self.spec.keys):
            raise ValueError(f"{self.spec.name} keys have {len(self.spec.keys)} part(s), got {key!r}")
        return key

    def get(self, key: Key | str, *, include_deleted: bool = False) -> Row | None:
        """The current row for ``key`` (None if absent or deleted)."""
        probe_scalar = string_scalar(composite_key(self._key(key)))
        with self._lock:
            self.refresh()
            best: Row | None = None
            for segment in self._segments.values():
                position = pc.index(segment.keys, probe_scalar).as_py()
                if position >= 0:
                    row = segment.table.slice(position, 1).to_pylist()[0]
                    if self._newer(best, row):
                        best = row
        if best is None or (best[DELETED] and not include_deleted):
            return None
        return best

    def _locate(self, probe: pa.Array) -> pa.Table:
        """For each probe (composite key) present in some file: the winning version's file index
        and row position, and whether it is a tombstone — computed without materializing rows."""
        segments = list(self._segments.values())
        parts = []
        for number, segment in enumerate(segments):
            positions = pc.index_in(probe, value_set=segment.keys)
            present = positions.is_valid()
            if not pc.any(present).as_py():
                continue
            found = positions.filter(present)
            versions = segment.table.select([TS, WRITER, DELETED]).take(found)
            parts.append(
                pa.Table.from_arrays(
                    [
                        pc.indices_nonzero(present),
                        pa.repeat(int64_scalar(number), len(found)),
                        found,
                        versions[TS],
                        versions[WRITER],
                        versions[DELETED],
                    ],
                    names=["probe", "segment", "position", TS, WRITER, DELETED],
                )
            )
        if not parts:
            return empty_table(
                pa.schema(
                    [("probe", pa.uint64()), ("segment", pa.int64()), ("position", pa.int32()), (DELETED, pa.bool_())]
                )
            )
        if len(parts) == 1:
            return parts[0]  # one file holds each key at most once
        located = pa.concat_tables(parts).sort_by([("probe", "ascending"), (TS, "descending"), (WRITER, "descending")])
        probes = located["probe"].combine_chunks()
        first = pa.concat_arrays([true_array(), pc.not_equal(probes.slice(1), probes.slice(0, len(probes) - 1))])
        return located.filter(first)

    def _probe(self, keys: Iterable[Key | str]) -> pa.Array:
        width = len(self.spec.keys)
        composites = []
        for key in keys:
            if isinstance(key, str):
                key = (key,)
            if len(key) != width:
                raise ValueError(f"{self.spec.name} keys have {width} part(s), got {key!r}")
            composites.append(KEY_SEPARATOR.join(key))
        return string_array(composites)

    def contains(self, keys: Iterable[Key | str]) -> list[bool]:
        """For each key, whether it currently has a (non-deleted) row; vectorized, for bulk checks."""
        probe = self._probe(keys)
        with self._lock:
            self.refresh()
            located = self._locate(probe)
        live = located.filter(pc.invert(located[DELETED]))["probe"].to_pylist()
        result = [False] * len(probe)
        for index in live:
            result[index] = True
        return result

    def rows(self, where: Mapping[str, str] | None = None, *, fresh: bool = True) -> list[Row]:
        """Current rows, optionally only those whose key columns equal ``where``'s values (``fresh``:
        as :meth:`to_arrow`)."""
        where = dict(where or {})
        unknown = [c for c in where if c not in self.spec.keys]
        if unknown:
            raise ValueError(f"rows(where=...) filters on key columns only, not {unknown}")
        table = self.to_arrow(where=where, fresh=fresh)
        return table.to_pylist()

    def to_arrow(
        self, *, include_deleted: bool = False, where: Mapping[str, str] | None = None, fresh: bool = True
    ) -> pa.Table:
        """The merged current state as one Arrow table (one row per key): refreshed first (as the
        staleness allows), or, with ``fresh=False``, the files already read (no request at all)."""
        with self._lock:
            if fresh:
                self.refresh()
            winners, _ = self._resolve_all(where)
        if not include_deleted and winners.num_rows:
            winners = winners.filter(pc.invert(winners[DELETED]))
        return winners

    def _resolve_all(self, where: Mapping[str, str] | None = None) -> tuple[pa.Table, pa.Array]:
        tables = []
        for segment in self._segments.values():
            table = segment.table
            if where:
                mask = None
                for column, value in where.items():
                    eq = pc.equal(table[column], value)
                    mask = eq if mask is None else pc.and_(mask, eq)
                table = table.filter(mask)
            if table.num_rows:
                tables.append(table)
        if not tables:
            return empty_table(self._schema), true_array()[:0]
        combined = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
        return resolve(combined, self.spec.keys)

    # -- writes ----------------------------------------------------------------------------------
    def _normalize(self, row: Mapping[str, Any], deleted: bool) -> Row:
        unknown = row.keys() - self._columns
        if unknown:
            raise ValueError(f"{self.spec.name} has no column(s) {', '.join(sorted(unknown))}")
        out: Row = {}
        for k in self.spec.keys:
            value = row.get(k)
            if not isinstance(value, str):
                raise ValueError(f"{self.spec.name}: key column {k} must be a string, got {value!r}")
            if KEY_SEPARATOR in value:
                raise ValueError(f"{self.spec.name}: key column {k} may not contain NUL characters")
            out[k] = value
        for name in self._value_names:
            out[name] = None if deleted else row.get(name)
        out[DELETED] = deleted
        return out

    def write(self, upserts: Iterable[Mapping[str, Any]] = (), deletes: Iterable[Key | str] = ()) -> str | None:
        """Write a batch of upserts and deletes as ONE new file (one PUT); durable when this returns.

        Within a batch the last row for a key wins. Returns the new file's name (None if empty).
        """
        batch: dict[str, Row] = {}
        for row in upserts:
            normalized = self._normalize(row, deleted=False)
            batch[composite_key(tuple(normalized[k] for k in self.spec.keys))] = normalized
        for key in deletes:
            parts = self._key(key)
            batch[composite_key(parts)] = self._normalize(dict(zip(self.spec.keys, parts, strict=True)), deleted=True)
        if not batch:
            return None
        ts = self.clock.tick()
        for row in batch.values():
            row[TS], row[WRITER] = ts, self.writer
        table = pa.Table.from_pylist([batch[k] for k in sorted(batch)], schema=self._schema)
        name = self._create(f"{ts:017d}_{self.writer}_{next(_sequence):06d}{DATA_SUFFIX}", table)
        self._maybe_compact()
        return name

    def write_versions(self, rows: Iterable[Mapping[str, Any]], writer: str) -> str | None:
        """Write rows that carry their own ``_ts`` (history imported from legacy state, stamped from its
        own timestamps) under ``writer``, as one file. Writing the same rows again is harmless: equal
        versions resolve to one row. Within the batch the greatest ``_ts`` per key is kept."""
        batch: dict[str, Row] = {}
        for row in rows:
            normalized = self._normalize({k: v for k, v in row.items() if k != TS}, deleted=False)
            normalized[TS], normalized[WRITER] = int(row[TS]), writer
            key = composite_key(tuple(normalized[k] for k in self.spec.keys))
            if key not in batch or batch[key][TS] < normalized[TS]:
                batch[key] = normalized
        if not batch:
            return None
        newest = max(r[TS] for r in batch.values())
        self.clock.observe(newest)
        table = pa.Table.from_pylist([batch[k] for k in sorted(batch)], schema=self._schema)
        return self._create(f"{newest:017d}_{self.writer}_{next(_sequence):06d}{DATA_SUFFIX}", table)

    def _create(self, name: str, table: pa.Table, supersedes: Iterable[str] = ()) -> str:
        supersedes = frozenset(supersedes)
        data = parquet_bytes(table, supersedes)
        if not self.storage.create_if_absent(self.storage.join(self.directory, name), data):
            # Names carry this process's unique writer id and a sequence number: a collision means
            # two processes share a writer id, which must never be papered over. (A create whose
            # answer was lost and whose re-send met 412 is recognised as ours by the storage.)
            raise StorageError(f"state file {self.directory}/{name} already exists; writer ids collide")
        with self._lock:
            self._adopt([self._segment(name, table, len(data), supersedes)], {})
        return name

    def upsert(self, row: Mapping[str, Any]) -> str | None:
        return self.write(upserts=[row])

    def delete(self, key: Key | str) -> str | None:
        return self.write(deletes=[key])

    # -- compaction ------------------------------------------------------------------------------
    def small_file_count(self) -> int:
        return sum(1 for s in self._segments.values() if not s.compacted)

    def _vacuum(self) -> tuple[int, int]:
        """Delete the superseded files whose grace period is over (the earliest superseded first, so
        a vacuum killed midway leaves the newer ones); returns (deleted, still kept)."""
        cutoff = time.time() - self.grace_seconds
        due = sorted((when, name) for name, when in self._superseded.items() if when <= cutoff)
        if due:
            self.storage.delete_many([self.storage.join(self.directory, name) for _, name in due])
            for _, name in due:
                del self._superseded[name]
        return len(due), len(self._superseded)

    def _maybe_compact(self) -> None:
        """Writers compact opportunistically once the table holds more small files than allowed. A
        writer's own files count as soon as they are written, so even a writer that never reads
        re-lists (and compacts) after ``max_small_files`` writes."""
        if self.small_file_count() <= self.max_small_files:
            return
        try:
            self.refresh(force=True)
            if self.small_file_count() > self.max_small_files:
                self.compact()
        except StorageError as exc:  # the write itself is durable; compaction can wait
            log.warning("opportunistic compaction of %s failed: %s", self.directory, exc)

    def compact(self) -> CompactionResult:
        """Merge every live file into one: winners per key with their original ``_ts``/``_writer``;
        tombstones kept unless older than the retention AND the only row of their key (so a
        compaction killed between its deletes can never bring a deleted row back). The output names
        the files it supersedes (the inputs, and any older superseded file still listed, so a reader
        that has it skips them all); superseded files past the grace period are deleted. Safe beside
        any number of writers, readers and compactors, and it never changes what a read returns."""
        with self._lock:
            self.refresh(force=True)
            inputs = list(self._segments.values())
            winners, sole = self._resolve_all()
            dropped = 0
            if winners.num_rows:
                old = pc.less(winners[TS], self.clock.now() - self.tombstone_retention_us)
                expired = pc.and_(pc.and_(winners[DELETED], sole), old)
                dropped = pc.sum(expired).as_py() or 0
            if len(inputs) <= 1 and not dropped:
                deleted, kept = self._vacuum()
                return CompactionResult(
                    self.spec.name, len(inputs), deleted, winners.num_rows, 0, None, kept, len(self._segments)
                )
            if dropped:
                winners = winners.filter(pc.invert(expired))
            output = None
            names = {s.name for s in inputs}
            if winners.num_rows or self.grace_seconds > 0:
                # Written even when empty (every row an expired tombstone): it is what marks the
                # inputs superseded until they are deleted.
                name = f"{self.clock.tick():017d}_{self.writer}_{next(_sequence):06d}{COMPACTED_SUFFIX}"
                output = self._create(name, winners, names | set(self._superseded))
            else:  # nothing to keep and no grace period: the inputs go at once
                now = time.time()
                self._superseded.update((n, now) for n in names)
                for n in names:
                    self._segments.pop(n, None)
            deleted, kept = self._vacuum()
            return CompactionResult(
                self.spec.name, len(inputs), deleted, winners.num_rows, dropped, output, kept, len(self._segments)
            )

    @property
    def version(self) -> tuple[frozenset[str], frozenset[str]]:
        """What the last refresh read (file names, unreadable names): files are immutable, so an
        equal version means equal contents."""
        with self._lock:
            return frozenset(self._segments), frozenset(self.bad_files)

    def readable_files(self) -> list[str]:
        """Locations of the live files the last refresh read successfully: a snapshot that a DuckDB
        query may read (with :func:`aperio_assets.state.sql.current_state_sql`) for the grace period
        after the refresh, whatever compaction does meanwhile."""
        with self._lock:
            return [self.storage.join(self.directory, name) for name in sorted(self._segments)]

    # -- health ----------------------------------------------------------------------------------
    def stats(self) -> TableStats:
        with self._lock:
            self.refresh()
            winners, _ = self._resolve_all()
            tombstones = (pc.sum(winners[DELETED]).as_py() or 0) if winners.num_rows else 0
            return TableStats(
                self.spec.name,
                winners.num_rows - tombstones,
                tombstones,
                len(self._segments),
                self.small_file_count(),
                sum(s.size for s in self._segments.values()),
                dict(self.bad_files),
                len(self._superseded),
            )


def open_state_table(
    storage: StorageProvider, directory: str, spec: TableSpec, compaction: CompactionSettings, **kwargs: Any
) -> StateTable:
    """A state table with the lake's compaction settings (the one way every caller opens one)."""
    return StateTable(
        storage,
        directory,
        spec,
        max_small_files=compaction.max_small_files,
        tombstone_retention_seconds=compaction.tombstone_retention_seconds,
        grace_seconds=compaction.grace_period_seconds,
        **kwargs,
    )

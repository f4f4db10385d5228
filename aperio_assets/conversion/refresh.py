"""Refreshing a schema (DESIGN §6): convert new or changed raw files, forget removed ones, (re)process
the batches they belong to, and regenerate the schema's model.

A raw file is reconverted only when its size, modification time or etag changed, or when its
recorded target is not the one :mod:`aperio_assets.conversion.naming` gives it (a lake converted
under the old naming moves over once, and the old files are deleted once nothing refers to them).
A batch is (re)marked when it is not processed yet, when one of its raw files was converted after its
mark, or when what its mark would say (target, rows, errors) changed, e.g. because a file was
removed. Converted files have one fixed, injective name per raw file, so two workers refreshing one
schema at once write the same files and end consistent, with no duplicated rows, and two raw files
never share a target (should two still map to one, the second fails with the reason instead of
overwriting the first). A file whose target cannot be stored (an S3 key over 1,024 bytes, a local
name over 255 bytes), whose Parquet DuckDB cannot read in place, or whose upload is rejected fails
alone, recorded in lineage with the reason; the others are converted. Only storage that cannot be
reached at all (``StorageUnavailable``) stops the refresh.

The refresh is three steps, each reading the state the step before wrote, so they can run in one
call (the CLI) or as three Dagster assets: ``convert_files`` (lineage rows), ``process_batches``
(partition status rows) and ``write_model`` (the generated model).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aperio_assets import layout
from aperio_assets.catalog.views import ViewStore
from aperio_assets.config import SchemaConfig, is_s3_url
from aperio_assets.conversion.discovery import Discovery, ListingSlice, RawFile, RawTable, discover_tables
from aperio_assets.conversion.formats import (
    ConversionError,
    Converted,
    convert_file,
    inspect_parquet,
    inspect_parquet_remote,
)
from aperio_assets.conversion.naming import (
    escape_glob,
    storage_name,
    target_parts,
    unreadable_path_reason,
    unstorable_reason,
)
from aperio_assets.errors import StorageError, StorageUnavailable
from aperio_assets.lake import Lake
from aperio_assets.state.access import is_shared, open_state
from aperio_assets.state.lineage import Row, columns_digest, lineage_columns
from aperio_assets.state.tracker import now_ms, status_row

log = logging.getLogger(__name__)
# Lineage is written in groups of this many changed files: a refresh killed midway keeps most of
# its work, without one PUT per file.
FLUSH_EVERY_FILES = 256
S3_FILES_IN_FLIGHT = 8  # conversions at once per process when raw files or tables/ are on S3
FILES_IN_FLIGHT_ENV = "APERIO_S3_FILES_IN_FLIGHT"  # to change it (the bench measures 1 and 8)
# The phase aperio's refresh marks its batches with. Only rows with this phase whose batch is gone
# are invalidated by a refresh: status rows of other pipelines are theirs to manage.
REFRESH_PHASE = "materialize"
Progress = Callable[[str], None]
LineageSink = Callable[[list[Row], list[str]], None]  # (rows recorded, source paths removed)
Key = tuple[str, ...]


@dataclass
class FileOutcome:
    table: str
    source: str
    status: str  # converted | skipped | failed | removed
    row_count: int | None = None
    error: str | None = None


@dataclass
class BatchOutcome:
    table: str
    batch: str
    status: str  # processed | skipped | failed | removed | pending
    row_count: int | None = None
    error: str | None = None


@dataclass
class RefreshResult:
    schema: str
    files: list[FileOutcome] = field(default_factory=list)
    batches: list[BatchOutcome] = field(default_factory=list)
    tables: int = 0
    ignored_files: list[str] = field(default_factory=list)
    ignored_reasons: dict[str, str] = field(default_factory=dict)  # path → why, for names aperio refuses
    model_written: bool = False

    def count(self, items: str, status: str) -> int:
        return sum(1 for o in getattr(self, items) if o.status == status)

    @property
    def failed_files(self) -> list[FileOutcome]:
        return [o for o in self.files if o.status == "failed"]


def _mtime_ms(mtime: float) -> int:
    return round(mtime * 1000)


def unchanged(raw: RawFile, row: Row | None) -> bool:
    """Size, modification time and etag as recorded when the file was last converted."""
    return (
        row is not None
        and row["source_size"] == raw.info.size
        and row["source_modified"] == _mtime_ms(raw.info.mtime)
        and row["source_etag"] == raw.info.etag
    )


class SchemaRefresh:
    """One refresh of one schema, step by step (see the module's docstring)."""

    def __init__(self, lake: Lake, schema: SchemaConfig, progress: Progress | None = None) -> None:
        self.lake = lake
        self.schema = schema
        self.storage = lake.storage
        self.raw_storage = lake.lake_storage
        self.progress = progress or (lambda message: None)
        self.tables_root = self.storage.aperio_path(schema.name, layout.TABLES_DIR)
        self.result = RefreshResult(schema.name)
        self._discovery: Discovery | None = None
        self._slice: ListingSlice | None = None  # see list_only
        self._owners: dict[str, str] | None = None  # target → the raw file it belongs to
        self.model: dict[str, Any] | None = None  # set by write_model

    @property
    def discovery(self) -> Discovery:
        """The schema's tables, listed once per refresh."""
        if self._discovery is None:
            self._discovery = discover_tables(self.raw_storage, self.schema.directory, self._slice)
            self.result.tables = len(self._discovery.tables)
            self.result.ignored_files = self._discovery.ignored
            self.result.ignored_reasons = self._discovery.reasons
            for path, reason in self._discovery.reasons.items():
                log.warning("%s: ignored %s: %s", self.schema.name, path, reason)
        return self._discovery

    @property
    def remote(self) -> bool:
        """The raw files or ``tables/`` are on S3: a conversion is then mostly waiting on requests."""
        return (
            self.raw_storage.local_path(self.schema.directory) is None
            or self.storage.local_path(self.tables_root) is None
        )

    @property
    def files_in_flight(self) -> int:
        """Conversions at once in this process: several when either side is S3 (a file is mostly
        waiting on requests there), one on local disk (a conversion is CPU, and Polars already
        uses every core for it)."""
        if not self.remote:
            return 1
        configured = os.environ.get(FILES_IN_FLIGHT_ENV, "")
        return int(configured) if configured.isdigit() and int(configured) > 0 else S3_FILES_IN_FLIGHT

    def list_only(self, part: ListingSlice) -> None:
        """List only the raw files in ``part`` of the schema's listing (a batch run's slice:
        :func:`~aperio_assets.conversion.batches.listing_slice`). Such a refresh converts and marks
        batches, but cannot forget what is gone."""
        if self._discovery is not None:
            raise RuntimeError("the schema is listed already")
        self._slice = part

    def list_everything(self) -> None:
        """List the whole schema from now on (after a slice that did not hold what was asked)."""
        self._slice = self._discovery = self._owners = None

    def use_discovery(self, discovery: Discovery) -> None:
        """Work from a listing made elsewhere (a worker gets its parent's) instead of listing again."""
        self._discovery = discovery
        self.result.tables = len(discovery.tables)

    # -- locations -------------------------------------------------------------------------------
    def named_target(self, table: RawTable, raw: RawFile) -> str:
        """The target :mod:`~aperio_assets.conversion.naming` gives this file (the raw path itself
        for Parquet, which is read where it is: never copied)."""
        if raw.format == "parquet":
            return raw.path
        return self.storage.join(self.tables_root, *target_parts(table.name, raw.relative, raw.partition))

    def _target_owners(self) -> dict[str, str]:
        """Named target → the first raw file (in discovery order) that it is the name of."""
        if self._owners is None:
            self._owners = {}
            for table in self.discovery.tables:
                for raw in table.files:
                    self._owners.setdefault(self.named_target(table, raw), raw.path)
        return self._owners

    def target_path(self, table: RawTable, raw: RawFile) -> str | None:
        """Where this file's converted Parquet goes; None if that name belongs to another raw file
        (the conversion then fails with the reason: never an overwrite)."""
        target = self.named_target(table, raw)
        return target if self._target_owners().get(target, raw.path) == raw.path else None

    def target_pattern(self, table: RawTable, batch_files: list[RawFile]) -> str:
        """The batch's files as one DuckDB pattern (its fixed part's glob characters escaped)."""
        if all(f.format == "parquet" for f in batch_files) and len(batch_files) == 1:
            return escape_glob(batch_files[0].path)
        first = batch_files[0]
        folder = target_parts(table.name, first.relative, first.partition)[:-1]  # the batch's folder
        return self.storage.join(escape_glob(self.storage.join(self.tables_root, *folder)), "*.parquet")

    def _owned(self, path: str | None) -> bool:
        """Only converted files under this schema's tables/ are ever deleted (never a raw file)."""
        return bool(path) and path.startswith(self.tables_root.rstrip("/") + "/")

    # -- step 1: conversion ----------------------------------------------------------------------
    def _unconvertible_reason(self, table: RawTable, raw: RawFile, target: str | None) -> str | None:
        """Why this file cannot be converted whatever its contents (None if it can be)."""
        if target is None:
            owner = self._target_owners()[self.named_target(table, raw)]
            return (
                f"its converted name {self.named_target(table, raw)} is already the target of {owner}; "
                "rename one of the two files"
            )
        if raw.format == "parquet":
            reason = unreadable_path_reason(raw.path, s3=is_s3_url(raw.path))
            return f"it cannot be read in place: {reason}; rename the file" if reason else None
        return unstorable_reason(target, s3=is_s3_url(target))

    def _convert(self, table: RawTable, raw: RawFile, workdir: Path) -> tuple[Row, Converted | None]:
        target = self.target_path(table, raw)
        row: Row = {
            "source_path": raw.path,
            "target_path": target,
            "source_modified": _mtime_ms(raw.info.mtime),
            "converted_at": now_ms(),
            "conversion_type": f"{raw.format}->parquet",
            "row_count": None,
            "source_size": raw.info.size,
            "source_etag": raw.info.etag,
            "table_name": table.name,
            "error": None,
            "extra": None,
        }
        reason = self._unconvertible_reason(table, raw, target)
        if reason is not None:
            row.update(error=reason, target_path=None)
            return row, None
        assert target is not None
        local_source = self.raw_storage.local_path(raw.path)
        downloaded = local_source is None and raw.format != "parquet"  # remote Parquet: its footer only
        try:
            if raw.format == "parquet" and local_source is None:
                converted = inspect_parquet_remote(
                    lambda start, length: self.raw_storage.read_range(raw.path, start, length),
                    raw.info.size,
                    raw.path.rsplit("/", 1)[-1],
                )
                row["conversion_type"] = "parquet (read in place)"
            elif raw.format == "parquet":
                converted = inspect_parquet(Path(local_source))
                row["conversion_type"] = "parquet (read in place)"
            else:
                if downloaded:
                    local_source = str(workdir / f"source-{uuid.uuid4().hex}.{raw.format}")
                    self.raw_storage.download(raw.path, local_source)
                # (a local raw path may hold glob characters: convert_file never expands them)
                local_target = workdir / f"target-{uuid.uuid4().hex}.parquet"
                converted = convert_file(Path(local_source), raw.format, local_target)
                try:
                    self._store(str(local_target), target)
                finally:
                    local_target.unlink(missing_ok=True)
        except ConversionError as exc:
            # A downloaded copy has a made-up name: the message names the raw file (and stays the
            # same from one refresh to the next, so the batch's mark does not change for nothing).
            message = str(exc)
            if downloaded and local_source:
                message = message.replace(Path(local_source).name, raw.path.rsplit("/", 1)[-1])
            row.update(error=message, target_path=None)
            return row, None
        except FileNotFoundError:
            row.update(error="the file disappeared during the refresh", target_path=None)
            return row, None
        except StorageError as exc:
            if isinstance(exc, StorageUnavailable):
                raise  # the storage is down or refuses us: nothing else would convert either
            row.update(error=f"could not store the converted file: {exc}", target_path=None)
            return row, None
        finally:
            if downloaded and local_source:
                Path(local_source).unlink(missing_ok=True)
        row["row_count"] = converted.row_count
        row["extra"] = json.dumps({"columns": [list(c) for c in converted.columns]}, ensure_ascii=False)
        return row, converted

    def _store(self, local_file: str, target: str) -> None:
        """Upload one converted file. A local name the filesystem refuses (too long, a file where a
        folder must be, not a valid name) fails this file alone, as a StorageError; a full or
        read-only disk is everyone's problem and stops the refresh."""
        try:
            self.storage.upload(local_file, target)
        except OSError as exc:
            if exc.errno in (errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EINVAL, errno.EILSEQ):
                raise StorageError(f"cannot write {target}: {exc.strerror}") from exc
            raise

    def convert_files(self, lineage: dict[str, Row], sink: LineageSink) -> None:
        """Convert every new or changed raw file, forget removed ones (deleting their outputs), and
        hand the lineage changes to ``sink`` in groups. ``lineage`` (source path → row, the current
        lineage) is updated in place."""
        gone, todo = self.plan(lineage)
        removed = self.forget(gone, lineage)
        replaced = self.convert(todo, lineage, sink, removed)
        self.delete_replaced(replaced, lineage)

    def gone(self, lineage: dict[str, Row]) -> list[Row]:
        """The lineage rows of this schema's raw files that the listing no longer has."""
        if self.discovery.partial:
            raise RuntimeError("a slice of the listing cannot say which files are gone")
        present = {f.path for t in self.discovery.tables for f in t.files}
        root = self.schema.directory.rstrip("/") + "/"
        return [row for path, row in lineage.items() if path.startswith(root) and path not in present]

    def plan(
        self, lineage: dict[str, Row], only: Collection[str] | None = None
    ) -> tuple[list[Row], list[tuple[RawTable, RawFile]]]:
        """The lineage rows of raw files that are gone, and the files to convert: new, changed,
        failed before (tried again until they convert), converted under another name (moved to
        their own, injective one), or whose converted file is gone. The rest are recorded skipped.
        ``only``: look at these raw paths alone (a batch run's)."""
        discovery = self.discovery
        gone = [] if discovery.partial else self.gone(lineage)
        selected = [
            (table, raw, lineage.get(raw.path))
            for table in discovery.tables
            for raw in table.files
            if only is None or raw.path in only
        ]
        # converted before, unchanged since, under the name it has now: skipped if its file is there
        kept = {
            raw.path: previous["target_path"]
            for table, raw, previous in selected
            if unchanged(raw, previous)
            and not previous.get("error")
            and previous.get("target_path") == self.target_path(table, raw)
        }
        owned = {t for t in kept.values() if self._owned(t)}  # (only those can have gone: see _owned)
        stored = self._stored(owned, len(selected), whole=only is None)
        todo: list[tuple[RawTable, RawFile]] = []
        for table, raw, _ in selected:
            target = kept.get(raw.path)
            if raw.path in kept and (target not in owned or target in stored):
                self.result.files.append(FileOutcome(table.name, raw.path, "skipped"))
            else:
                todo.append((table, raw))
        return gone, todo

    def _stored(self, targets: Collection[str], outputs: int, *, whole: bool) -> set[str]:
        """Which converted files there are, of ``targets`` at least: one listing of ``tables/``, of
        all of it for the whole schema (``whole``), else of the slice from the first of ``targets``
        to the last: a batch run's LIST is of about what it converts, not of the lake. ``outputs``:
        about how many outputs that slice holds (the run's files: a page-size hint). None to check:
        no listing."""
        if not targets:
            return set()
        bounds = {} if whole else ListingSlice.holding(targets, outputs).bounds()
        return {i.path for i in self.storage.list(self.tables_root, recursive=True, **bounds)}

    def forget(self, gone: list[Row], lineage: dict[str, Row]) -> list[str]:
        """Delete the outputs of raw files that are gone and drop them from ``lineage``; returns
        their source paths (the lineage rows to delete)."""
        for row in gone:
            if self._owned(row.get("target_path")):
                self.storage.delete(row["target_path"])
            self.result.files.append(FileOutcome(row.get("table_name") or "?", row["source_path"], "removed"))
            del lineage[row["source_path"]]
        return [row["source_path"] for row in gone]

    def convert(
        self,
        todo: Sequence[tuple[RawTable, RawFile]],
        lineage: dict[str, Row],
        sink: LineageSink,
        removed: Sequence[str] = (),
    ) -> set[str]:
        """Convert ``todo``, recording each file's lineage row in ``lineage`` and handing rows (and
        ``removed``) to ``sink`` in groups; returns the earlier targets that new ones replaced."""
        pending: list[Row] = []
        gone = list(removed)
        replaced: set[str] = set()
        with (
            tempfile.TemporaryDirectory(prefix="aperio-refresh-") as tmp,
            ThreadPoolExecutor(max_workers=self.files_in_flight) as pool,
        ):
            # Files in flight at once: on S3 a file is mostly waiting (a GET and a PUT of a few ms of
            # work each), so several overlap; the results are taken in order, in this thread.
            results = pool.map(lambda item: self._convert(item[0], item[1], Path(tmp)), todo)
            for (table, raw), (row, _) in zip(todo, results, strict=True):
                previous = lineage.get(raw.path)
                self.progress(f"{self.schema.name}.{table.name}: {raw.relative}")
                if previous is not None and previous.get("target_path") not in (None, row["target_path"]):
                    replaced.add(previous["target_path"])
                lineage[raw.path] = row
                pending.append(row)
                self.result.files.append(
                    FileOutcome(
                        table.name, raw.path, "failed" if row["error"] else "converted", row["row_count"], row["error"]
                    )
                )
                if len(pending) >= FLUSH_EVERY_FILES:
                    sink(pending, gone)
                    pending, gone = [], []
        if pending or gone:
            sink(pending, gone)
        if todo:
            self.follow_column_drift(lineage, {table.name: table for table, _ in todo}.values())
        return replaced

    def follow_column_drift(self, lineage: dict[str, Row], tables: Iterable[RawTable]) -> list[str]:
        """A view scan bound from one footer (its files' columns agreed when the model was written)
        would read a file converted since with other columns wrongly, or fail, until the model is
        written again (at the end of a refresh; in Dagster, after the wave): such a table's
        definition is written at once with ``union_by_name`` in that scan (DESIGN §7). Costs nothing
        while the converted files of each set of partition keys of ``tables`` have the same columns;
        else a GET of the model."""
        varied: dict[str, dict[tuple[str, ...], set[str]]] = {}
        for table in tables:
            found: dict[tuple[str, ...], set[str]] = {}
            for raw in table.files:
                row = lineage.get(raw.path) or {}
                columns = None if row.get("error") else lineage_columns(row)
                if columns is not None:  # (a file not converted yet has no output to read)
                    found.setdefault(tuple(k for k, _ in raw.partition), set()).add(columns_digest(columns))
            if any(len(digests) > 1 for digests in found.values()):
                varied[table.name] = found
        return ViewStore(self.lake).follow_column_drift(self.schema.name, varied) if varied else []

    def delete_replaced(self, replaced: set[str], lineage: dict[str, Row]) -> None:
        """An old target goes once no lineage row refers to it (under the old naming two raw files
        could share one; both are moved before it is deleted)."""
        referenced = {row.get("target_path") for row in lineage.values()}
        for target in sorted(replaced - referenced):
            if self._owned(target):
                self.storage.delete(target)

    # -- step 2: partition status ----------------------------------------------------------------
    def process_batches(
        self,
        lineage: dict[str, Row],
        status: Sequence[Row],
        *,
        only: Collection[Key] | None = None,
        exclude: Collection[Key] = (),
    ) -> tuple[list[Row], list[Key]]:
        """The status rows to write (one per batch that changed) and the ``(alternate, key)`` pairs
        to delete (batches aperio marked whose files are all gone). Writes nothing. ``only``: look
        at these ``(table, batch)`` keys alone, and delete nothing; ``exclude``: leave these out
        (another worker marked them)."""
        current = {(r["alternate_name"], r["incremental_key_values"]): r for r in status}
        stamp = now_ms()
        marks: list[Row] = []
        for table in self.discovery.tables:
            for batch, files in table.batches().items():
                if (only is not None and (table.name, batch) not in only) or (table.name, batch) in exclude:
                    continue
                rows = [lineage.get(f.path) for f in files]
                if not all(unchanged(f, r) for f, r in zip(files, rows, strict=True)):
                    # changed since its conversion (or not converted yet): the next refresh takes it
                    self.result.batches.append(BatchOutcome(table.name, batch, "pending"))
                    continue
                errors = "; ".join(
                    f"{f.relative}: {r['error']}" for f, r in zip(files, rows, strict=True) if r.get("error")
                )
                mark = status_row(
                    {
                        "alternate": table.name,
                        "source_table": table.name,
                        "key_values": batch,
                        "target_pattern": self.target_pattern(table, files),
                        "row_count": sum(r.get("row_count") or 0 for r in rows),
                        "error_message": errors or None,
                        "phase": REFRESH_PHASE,
                    },
                    stamp,
                )
                previous = current.get((table.name, batch))
                if previous is not None and not _outdated(previous, mark, rows):
                    self.result.batches.append(BatchOutcome(table.name, batch, "skipped"))
                    continue
                marks.append(mark)
                self.result.batches.append(
                    BatchOutcome(
                        table.name, batch, "failed" if errors else "processed", mark["row_count"], errors or None
                    )
                )
        deletes = [] if only is not None else self.vanished_batches(status)
        return marks, deletes

    def vanished_batches(self, status: Sequence[Row]) -> list[Key]:
        """The ``(alternate, key)`` of batches this refresh marked whose files are all gone (status
        rows of other pipelines are theirs to manage); recorded as removed."""
        if self.discovery.partial:
            raise RuntimeError("a slice of the listing cannot say which batches are gone")
        live = {(table.name, batch) for table in self.discovery.tables for batch in table.batches()}
        deletes = [
            (r["alternate_name"], r["incremental_key_values"])
            for r in status
            if (r["alternate_name"], r["incremental_key_values"]) not in live
            and r.get("phase") == REFRESH_PHASE
            and r.get("source_table") == r["alternate_name"]
        ]
        self.result.batches.extend(BatchOutcome(alternate, batch, "removed") for alternate, batch in deletes)
        return deletes

    # -- step 3: generated model -----------------------------------------------------------------
    def write_model(self, lineage: dict[str, Row]) -> bool:
        """Write ``generated-model.json`` if what it says changed; returns whether it was written."""
        path = self.storage.aperio_path(self.schema.name, layout.GENERATED_MODEL)
        try:
            previous = json.loads(self.storage.read_bytes(path))
        except (FileNotFoundError, ValueError):
            previous = {}
        old_tables = {t["name"]: t for t in previous.get("tables", [])}
        tables = []
        for table in self.discovery.tables:
            rows = [lineage.get(f.path) or {} for f in table.files]
            converted = sorted(
                (r for r in rows if lineage_columns(r) is not None), key=lambda r: r.get("converted_at") or 0
            )
            if converted:  # the newest conversion's columns
                cols = lineage_columns(converted[-1]) or []
            else:  # nothing recorded them (e.g. migrated lineage): the columns are what they were
                cols = [(c["name"], c["type"]) for c in old_tables.get(table.name, {}).get("columns", [])]
            tables.append(
                {
                    "name": table.name,
                    "location": self.storage.join(self.tables_root, storage_name(table.name)),
                    "sourceFormats": list(table.formats),
                    "partitionColumns": list(table.partition_columns),
                    "columns": [{"name": name, "type": dtype} for name, dtype in cols],
                    "rowCount": sum(r.get("row_count") or 0 for r in rows),
                    "files": len(table.files),
                    "failedFiles": sum(1 for r in rows if r.get("error")),
                    "parquetInPlace": [f.path for f in table.files if f.format == "parquet"],
                    "layouts": _layouts(table, rows),
                }
            )
        model = {"schema": self.schema.name, "directory": self.schema.directory, "tables": tables}
        self.model = model  # what the file says now (callers need not read it back)
        if {k: v for k, v in previous.items() if k != "generatedAt"} == model:
            return False
        model["generatedAt"] = int(time.time() * 1000)
        self.storage.write_bytes(path, (json.dumps(model, indent=2, ensure_ascii=False) + "\n").encode())
        self.result.model_written = True
        return True


def _layouts(table: RawTable, rows: list[Row]) -> list[dict[str, Any]]:
    """The table's readable files by their partition keys (in folder order): whether any was
    converted, the raw Parquet files read in place, and ``columnsDigest``, a digest of the columns
    when the lineage shows every file of the set with the same ones (else None). A view reads each
    set of keys in one scan, and one whose files all have the same columns needs no
    ``union_by_name``, which would read every file's footer to bind the view (DESIGN §7)."""
    layouts: dict[tuple[str, ...], dict[str, Any]] = {}
    columns: dict[tuple[str, ...], set[str | None]] = {}
    for raw, row in zip(table.files, rows, strict=True):
        if row.get("error"):
            continue  # a failed file has no output to read
        keys = tuple(k for k, _ in raw.partition)
        entry = layouts.setdefault(keys, {"keys": list(keys), "converted": False, "inPlace": []})
        if raw.format == "parquet":
            entry["inPlace"].append(raw.path)
        else:
            entry["converted"] = True
        found = lineage_columns(row)
        columns.setdefault(keys, set()).add(None if found is None else columns_digest(found))
    for keys, entry in layouts.items():
        (only,) = columns[keys] if len(columns[keys]) == 1 else (None,)
        entry["columnsDigest"] = only
    return [layouts[k] for k in sorted(layouts)]


def _outdated(previous: Row, mark: Row, lineage_rows: list[Row | None]) -> bool:
    """Whether a batch's recorded status no longer says what its files say now."""
    said = ("target_pattern", "row_count", "error_status", "error_message")
    if any(previous.get(c) != mark[c] for c in said):
        return True
    return any((r or {}).get("converted_at", 0) > (previous.get("processed_at") or 0) for r in lineage_rows)


def refresh_schema(
    lake: Lake, schema: SchemaConfig, progress: Progress | None = None, workers: int = 1
) -> RefreshResult:
    """The three steps in one call, each writing its state before the next reads it. With
    ``workers`` > 1 (shared mode), the files to convert are shared out to that many processes, each
    recording its own lineage and marking the batches it converted whole
    (:mod:`~aperio_assets.conversion.parallel`)."""
    run = SchemaRefresh(lake, schema, progress)
    conversions = open_state(lake, schema.name, layout.CONVERSIONS)
    lineage = {r["source_path"]: r for r in conversions.rows()}

    def sink(rows: list[Row], removed: list[str]) -> None:
        conversions.apply(rows, [(p,) for p in removed])

    marked: set[Key] = set()
    if workers > 1 and is_shared(lake, schema.name):  # (legacy stores are single-writer)
        from aperio_assets.conversion.parallel import convert_in_workers

        gone, todo = run.plan(lineage)
        removed = run.forget(gone, lineage)
        if removed:
            sink([], removed)
        replaced, marked = convert_in_workers(run, todo, lineage, sink, workers)
        run.delete_replaced(replaced, lineage)
    else:
        run.convert_files(lineage, sink)
    status = open_state(lake, schema.name, layout.PARTITION_STATUS)
    marks, deletes = run.process_batches(lineage, status.rows(), exclude=marked)
    status.apply(marks, deletes)
    run.write_model(lineage)
    return run.result


def refresh(
    lake: Lake, schema: str | None = None, progress: Progress | None = None, workers: int = 1
) -> list[RefreshResult]:
    """Refresh every schema (or one), then the view definitions: the library call behind
    `aperio refresh`; the Dagster assets run the same steps one by one."""
    results = [refresh_schema(lake, s, progress, workers) for s in lake.select_schemas(schema)]
    ViewStore(lake).rebuild()
    return results

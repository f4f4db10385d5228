"""Refreshing a schema (SPEC §6): convert new or changed raw files, forget removed ones, (re)process
the batches they belong to, and regenerate the schema's model.

A raw file is reconverted only when its size, modification time or etag changed. A batch is
processed when it is not processed yet or when any of its raw files was added, removed or changed.
Converted files have one fixed name per raw file, so two workers refreshing one schema at once
write the same files and end consistent, with no duplicated rows. The same code serves the CLI and
the Dagster assets.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aperio_assets import layout
from aperio_assets.catalog.views import ViewStore
from aperio_assets.config import SchemaConfig
from aperio_assets.conversion.discovery import Discovery, RawFile, RawTable, discover_tables
from aperio_assets.conversion.formats import ConversionError, Converted, convert_file, inspect_parquet
from aperio_assets.lake import Lake
from aperio_assets.state import IncrementalTracker, open_lineage, open_tracker
from aperio_assets.state.keys import canonical_key, parse_key
from aperio_assets.state.lineage import ConversionLineage, Row

log = logging.getLogger(__name__)
FLUSH_EVERY_BATCHES = 64  # lineage rows and batch marks are written in groups, not one PUT per batch
# A refresh reads the status once, at its start: it is the one processing these batches, and a
# concurrent refresh at worst redoes idempotent work. Without this every table's lookup re-lists.
RUN_STALENESS_SECONDS = 3600.0
Progress = Callable[[str], None]


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
    status: str  # processed | skipped | failed | removed
    row_count: int | None = None
    error: str | None = None


@dataclass
class RefreshResult:
    schema: str
    files: list[FileOutcome] = field(default_factory=list)
    batches: list[BatchOutcome] = field(default_factory=list)
    tables: int = 0
    ignored_files: list[str] = field(default_factory=list)
    model_written: bool = False

    def count(self, items: str, status: str) -> int:
        return sum(1 for o in getattr(self, items) if o.status == status)

    @property
    def failed_files(self) -> list[FileOutcome]:
        return [o for o in self.files if o.status == "failed"]

    def summary(self) -> dict[str, Any]:
        return {"schema": self.schema, "tables": self.tables,
                "files": {s: self.count("files", s) for s in ("converted", "skipped", "failed", "removed")},
                "batches": {s: self.count("batches", s) for s in ("processed", "skipped", "failed", "removed")},
                "failures": [{"table": o.table, "source": o.source, "error": o.error} for o in self.failed_files],
                "ignoredFiles": self.ignored_files, "modelWritten": self.model_written}



def _mtime_ms(mtime: float) -> int:
    return round(mtime * 1000)


def _folder_and_stem(raw: RawFile) -> tuple[str, str]:
    folder, _, name = raw.relative.rpartition("/")
    return folder, name.rsplit(".", 1)[0]


def unchanged(raw: RawFile, row: Row | None) -> bool:
    """Size, modification time and etag as recorded when the file was last converted."""
    return row is not None and row["source_size"] == raw.info.size \
        and row["source_modified"] == _mtime_ms(raw.info.mtime) and row["source_etag"] == raw.info.etag


class SchemaRefresher:
    """One refresh of one schema."""

    def __init__(self, lake: Lake, schema: SchemaConfig, progress: Progress | None = None) -> None:
        self.lake = lake
        self.schema = schema
        self.storage = lake.storage
        self.raw_storage = lake.lake_storage
        self.progress = progress or (lambda message: None)
        self.tracker: IncrementalTracker = open_tracker(lake, schema.name,
                                                        max_staleness_seconds=RUN_STALENESS_SECONDS)
        self.lineage: ConversionLineage = open_lineage(lake, schema.name)
        self.tables_root = self.storage.aperio_path(schema.name, layout.TABLES_DIR)
        self.result = RefreshResult(schema.name)
        self._stems: dict[str, Counter] = {}
        self._pending_rows: list[Row] = []
        self._pending_marks: list[dict[str, Any]] = []

    # -- locations -------------------------------------------------------------------------------
    def target_path(self, table: RawTable, raw: RawFile) -> str:
        if raw.format == "parquet":
            return raw.path  # Parquet is read where it is: never copied
        name = raw.relative.rsplit("/", 1)[-1]
        folder, stem = _folder_and_stem(raw)
        # a.csv beside a.json in one folder: both keep their suffix, so their outputs differ
        clash = self._stem_counts(table)[(folder, stem)] > 1
        return self.storage.join(self.tables_root, table.name, raw.partition_dir,
                                 f"{name if clash else stem}.parquet")

    def _stem_counts(self, table: RawTable) -> Counter:
        if table.name not in self._stems:
            self._stems[table.name] = Counter(_folder_and_stem(f) for f in table.files if f.format != "parquet")
        return self._stems[table.name]

    def target_pattern(self, table: RawTable, batch_files: list[RawFile]) -> str:
        if all(f.format == "parquet" for f in batch_files) and len(batch_files) == 1:
            return batch_files[0].path
        return self.storage.join(self.tables_root, table.name, batch_files[0].partition_dir, "*.parquet")

    def _owned(self, path: str | None) -> bool:
        """Only converted files under this schema's tables/ are ever deleted (never a raw file)."""
        return bool(path) and path.startswith(self.tables_root.rstrip("/") + "/")

    # -- conversion ------------------------------------------------------------------------------
    def _convert(self, table: RawTable, raw: RawFile, workdir: Path) -> tuple[Row, Converted | None]:
        target = self.target_path(table, raw)
        row: Row = {"source_path": raw.path, "target_path": target, "source_modified": _mtime_ms(raw.info.mtime),
                    "converted_at": int(time.time() * 1000), "conversion_type": f"{raw.format}->parquet",
                    "row_count": None, "source_size": raw.info.size, "source_etag": raw.info.etag,
                    "table_name": table.name, "error": None, "extra": None}
        local_source = self.raw_storage.local_path(raw.path)
        downloaded = local_source is None
        try:
            if downloaded:
                local_source = str(workdir / f"source-{uuid.uuid4().hex}.{raw.format}")
                self.raw_storage.download(raw.path, local_source)
            if raw.format == "parquet":
                converted = inspect_parquet(Path(local_source))
                row["conversion_type"] = "parquet (read in place)"
            else:
                local_target = workdir / f"target-{uuid.uuid4().hex}.parquet"
                converted = convert_file(Path(local_source), raw.format, local_target)
                self.storage.upload(str(local_target), target)
                local_target.unlink(missing_ok=True)
        except ConversionError as exc:
            row.update(error=str(exc), target_path=None)
            return row, None
        except FileNotFoundError:
            row.update(error="the file disappeared during the refresh", target_path=None)
            return row, None
        finally:
            if downloaded and local_source:
                Path(local_source).unlink(missing_ok=True)
        row["row_count"] = converted.row_count
        return row, converted

    # -- the refresh -----------------------------------------------------------------------------
    def run(self) -> RefreshResult:
        discovery = discover_tables(self.raw_storage, self.schema.directory)
        self.result.tables = len(discovery.tables)
        self.result.ignored_files = discovery.ignored
        lineage = self.lineage.records()
        self._forget_removed(discovery, lineage)
        columns: dict[str, list[tuple[str, str]]] = {}
        with tempfile.TemporaryDirectory(prefix="aperio-refresh-") as tmp:
            for table in discovery.tables:
                self._refresh_table(table, lineage, Path(tmp), columns)
            self._flush()
        self.result.model_written = self._write_model(discovery, columns, lineage)
        return self.result

    def _forget_removed(self, discovery: Discovery, lineage: dict[str, Row]) -> None:
        present = {f.path for t in discovery.tables for f in t.files}
        root = self.schema.directory.rstrip("/") + "/"
        gone = [row for path, row in lineage.items() if path.startswith(root) and path not in present]
        if not gone:
            return
        for row in gone:
            if self._owned(row.get("target_path")):
                self.storage.delete(row["target_path"])
            table = row.get("table_name") or "?"
            self.result.files.append(FileOutcome(table, row["source_path"], "removed"))
        self.lineage.remove([row["source_path"] for row in gone])
        for row in gone:
            lineage.pop(row["source_path"], None)
        # Batches left with no raw file at all are no longer processed.
        live_batches = {(t.name, b) for t in discovery.tables for b in t.batches()}
        for table_name in {row.get("table_name") for row in gone if row.get("table_name")}:
            for key in self.tracker.get_processed_key_values(table_name):
                batch = canonical_key(key)
                if (table_name, batch) not in live_batches:
                    self.tracker.invalidate(table_name, key)
                    self.result.batches.append(BatchOutcome(table_name, batch, "removed"))

    def _refresh_table(self, table: RawTable, lineage: dict[str, Row], workdir: Path,
                       columns: dict[str, list[tuple[str, str]]]) -> None:
        batches = table.batches()
        keys = list(batches)
        unprocessed = {keys[i] for i in self.tracker.filter_unprocessed(table.name, table.name,
                                                                        [parse_key(k) for k in keys])}
        for batch, files in batches.items():
            changed = [f for f in files if not unchanged(f, lineage.get(f.path))]
            if not changed and batch not in unprocessed:
                self.result.batches.append(BatchOutcome(table.name, batch, "skipped"))
                self.result.files.extend(FileOutcome(table.name, f.path, "skipped") for f in files)
                continue
            errors = []
            for raw in files:
                if raw in changed:
                    self.progress(f"{self.schema.name}.{table.name}: {raw.relative}")
                    row, converted = self._convert(table, raw, workdir)
                    lineage[raw.path] = row
                    self._pending_rows.append(row)
                    if converted is not None:
                        columns[table.name] = list(converted.columns)
                    self.result.files.append(FileOutcome(table.name, raw.path, "failed" if row["error"] else
                                                         "converted", row["row_count"], row["error"]))
                else:
                    self.result.files.append(FileOutcome(table.name, raw.path, "skipped"))
                if lineage[raw.path].get("error"):
                    errors.append(f"{raw.relative}: {lineage[raw.path]['error']}")
            rows = sum(lineage[f.path].get("row_count") or 0 for f in files)
            mark = {"alternate": table.name, "source_table": table.name, "key_values": parse_key(batch),
                    "target_pattern": self.target_pattern(table, files), "row_count": rows}
            if errors:
                mark["error_message"] = "; ".join(errors)
            self._pending_marks.append(mark)
            self.result.batches.append(BatchOutcome(table.name, batch, "failed" if errors else "processed",
                                                    rows, "; ".join(errors) or None))
            if len(self._pending_marks) >= FLUSH_EVERY_BATCHES:
                self._flush()

    def _flush(self) -> None:
        # Lineage first: a batch is only marked once what it was made from is recorded. A refresh
        # killed before a flush redoes those batches next time (their outputs have fixed names).
        self.lineage.record_many(self._pending_rows)
        self.tracker.mark_many(self._pending_marks)
        self._pending_rows.clear()
        self._pending_marks.clear()

    # -- generated model -------------------------------------------------------------------------
    def _write_model(self, discovery: Discovery, columns: dict[str, list[tuple[str, str]]],
                     lineage: dict[str, Row]) -> bool:
        path = self.storage.aperio_path(self.schema.name, layout.GENERATED_MODEL)
        try:
            previous = json.loads(self.storage.read_bytes(path))
        except (FileNotFoundError, ValueError):
            previous = {}
        old_tables = {t["name"]: t for t in previous.get("tables", [])}
        tables = []
        for table in discovery.tables:
            cols = columns.get(table.name)
            if cols is None:  # nothing converted this time: the columns are what they were
                cols = [(c["name"], c["type"]) for c in old_tables.get(table.name, {}).get("columns", [])]
            rows = [lineage.get(f.path) or {} for f in table.files]
            tables.append({
                "name": table.name,
                "location": self.storage.join(self.tables_root, table.name),
                "sourceFormats": list(table.formats),
                "partitionColumns": list(table.partition_columns),
                "columns": [{"name": name, "type": dtype} for name, dtype in cols],
                "rowCount": sum(r.get("row_count") or 0 for r in rows),
                "files": len(table.files),
                "failedFiles": sum(1 for r in rows if r.get("error")),
                "parquetInPlace": [f.path for f in table.files if f.format == "parquet"],
            })
        model = {"schema": self.schema.name, "directory": self.schema.directory, "tables": tables}
        if {k: v for k, v in previous.items() if k != "generatedAt"} == model:
            return False
        model["generatedAt"] = int(time.time() * 1000)
        self.storage.write_bytes(path, (json.dumps(model, indent=2, ensure_ascii=False) + "\n").encode())
        return True


def refresh(lake: Lake, schema: str | None = None, progress: Progress | None = None) -> list[RefreshResult]:
    """Refresh every schema (or one), then the view definitions: the library call behind
    `aperio refresh` and the Dagster assets."""
    results = [SchemaRefresher(lake, s, progress).run() for s in lake.select_schemas(schema)]
    ViewStore(lake).rebuild()
    return results


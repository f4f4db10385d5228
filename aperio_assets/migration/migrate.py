"""Migration of legacy local state into shared state (DESIGN §8).

Per shared-mode schema with legacy files (under ``aperioDirectory`` or ``legacyDirectory``):

1. read every legacy file from a copy (a corrupt file stops this schema only, and stays where it is);
2. back the legacy files up into ``_archive/<utc-stamp>/`` before anything is written;
3. write each kind of state as state files whose rows carry ``_ts`` from the legacy timestamps
   (``processed_at``, ``completed_at``, ``convertedAt``) and the writer ``legacy-migration``, so
   anything written in shared mode since stays newer, and a re-run writes the very same versions;
4. read it back and compare row by row;
5. record ``_migrations/<schema>-<kind>.json`` (source checksum, counts, time);
6. remove the originals (they are in the archive) unless ``archive=False``.

Every step is idempotent, so a run killed anywhere is finished by running again, and two migrators at
once write identical versions. A kind whose record matches the source's checksum is skipped.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aperio_assets import layout
from aperio_assets.catalog.views import ViewStore
from aperio_assets.config import SchemaConfig
from aperio_assets.lake import Lake
from aperio_assets.migration.legacy import (
    CorruptLegacyFile,
    LegacyFile,
    fetch,
    read_catalog,
    read_conversions,
    read_partition_status,
)
from aperio_assets.state.access import is_shared, schema_table
from aperio_assets.state.spec import DELETED, TS, WRITER, TableSpec
from aperio_assets.state.table import StateTable
from aperio_assets.state.tables import CONVERSIONS, PARTITION_STATUS, TABLE_COMPLETION
from aperio_assets.storage import LocalStorage, StorageProvider

MIGRATION_WRITER = "legacy-migration"
# kind → (state table, the legacy timestamp (ms) a row's version comes from)
KINDS: dict[str, tuple[TableSpec, str]] = {
    "partition_status": (PARTITION_STATUS, "processed_at"),
    "table_completion": (TABLE_COMPLETION, "completed_at"),
    "conversions": (CONVERSIONS, "converted_at"),
}


@dataclass
class KindResult:
    kind: str
    source: str
    rows: int
    status: str  # migrated | already-migrated | would-migrate
    state_file: str | None = None


@dataclass
class SchemaResult:
    schema: str
    kinds: list[KindResult] = field(default_factory=list)
    archived: list[str] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class MigrationReport:
    dry_run: bool
    schemas: list[SchemaResult] = field(default_factory=list)

    @property
    def failed(self) -> list[SchemaResult]:
        return [s for s in self.schemas if s.error]

    def to_dict(self) -> dict[str, Any]:
        return {"dryRun": self.dry_run, "schemas": [asdict(s) for s in self.schemas], "ok": not self.failed}


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


class Migrator:
    def __init__(
        self, lake: Lake, *, dry_run: bool = False, archive: bool = True, progress: Callable[[str], None] | None = None
    ) -> None:
        self.lake, self.dry_run, self.archive = lake, dry_run, archive
        self.progress = progress or (lambda message: None)
        self.storage = lake.storage
        self.stamp = _stamp()
        self.legacy_roots: list[tuple[str, StorageProvider]] = [(lake.config.aperio_directory, lake.storage)]
        if lake.config.legacy_directory:
            self.legacy_roots.append((lake.config.legacy_directory, LocalStorage()))

    # -- finding legacy files --------------------------------------------------------------------
    def find(self, *relative: str) -> LegacyFile | None:
        for root, storage in self.legacy_roots:
            location = storage.join(root, *relative)
            if storage.exists(location):
                return LegacyFile(location, storage)
        return None

    def legacy_files(self, schema: str) -> dict[str, LegacyFile]:
        found = {}
        for name in (layout.LEGACY_PARTITION_STATUS, layout.LEGACY_CONVERSIONS, layout.LEGACY_GENERATED_MODEL):
            file = self.find(schema, name)
            if file is not None:
                found[name] = file
        return found

    # -- records ---------------------------------------------------------------------------------
    def _record_path(self, name: str) -> str:
        return self.storage.aperio_path(None, f"{layout.MIGRATIONS_DIR}/{name}.json")

    def _recorded(self, name: str, checksum: str) -> bool:
        try:
            return json.loads(self.storage.read_bytes(self._record_path(name))).get("checksum") == checksum
        except (FileNotFoundError, ValueError):
            return False

    def _record(self, name: str, **fields: Any) -> None:
        document = {**fields, "migratedAt": int(time.time() * 1000)}
        self.storage.write_bytes(self._record_path(name), (json.dumps(document, indent=2) + "\n").encode())

    # -- archive ---------------------------------------------------------------------------------
    def _archive_location(self, file: LegacyFile, schema: str | None) -> str:
        name = file.location.rsplit("/", 1)[-1]
        return self.storage.aperio_path(None, f"{layout.ARCHIVE_DIR}/{self.stamp}/{schema or 'catalog'}/{name}")

    def _backup(self, file: LegacyFile, schema: str | None) -> str:
        """Copy a legacy file (and its WAL) into the archive; returns where it went."""
        assert file.local_copy is not None
        target = self._archive_location(file, schema)
        for suffix in ("", ".wal"):
            copy = Path(str(file.local_copy) + suffix)
            if copy.exists():
                self.storage.upload(str(copy), target + suffix)
        return target

    def _remove_original(self, file: LegacyFile) -> None:
        """Delete a legacy file, its WAL and, for conversions, its lock file (deletes are idempotent)."""
        file.storage.delete(file.location)
        file.storage.delete(file.location + ".wal")
        if file.location.endswith(layout.LEGACY_CONVERSIONS):
            file.storage.delete(file.location + ".lock")

    # -- one kind --------------------------------------------------------------------------------
    def _state_table(self, schema: str, spec: TableSpec) -> StateTable:
        return schema_table(self.lake, schema, spec)

    def _migrate_kind(self, schema: str, kind: str, rows: list[dict[str, Any]], source: LegacyFile) -> KindResult:
        spec, stamp_column = KINDS[kind]
        record = f"{schema}-{kind}"
        if self._recorded(record, source.checksum):
            return KindResult(kind, source.location, len(rows), "already-migrated")
        if self.dry_run:
            return KindResult(kind, source.location, len(rows), "would-migrate")
        self.progress(f"{schema}: writing and verifying {len(rows)} {kind} rows")
        versions = [
            {**{c: r.get(c) for c in spec.keys + spec.value_names}, TS: (r.get(stamp_column) or 0) * 1000} for r in rows
        ]
        state_file = self._state_table(schema, spec).write_versions(versions, MIGRATION_WRITER)
        self._verify(schema, spec, versions)
        self._record(
            record,
            schema=schema,
            kind=kind,
            source=source.location,
            checksum=source.checksum,
            rows=len(rows),
            stateFile=state_file,
        )
        return KindResult(kind, source.location, len(rows), "migrated", state_file)

    def _verify(self, schema: str, spec: TableSpec, versions: list[dict[str, Any]]) -> None:
        """Every legacy row reads back equal, unless shared mode has written that key since."""
        fresh = self._state_table(schema, spec)
        current = {tuple(r[k] for k in spec.keys): r for r in fresh.to_arrow(include_deleted=True).to_pylist()}
        for version in versions:
            key = tuple(version[k] for k in spec.keys)
            row = current.get(key)
            if row is None:
                raise CorruptLegacyFile(f"verification failed: {spec.name} row {key} was not written")
            if (row[TS], row[WRITER]) > (version[TS], MIGRATION_WRITER):
                continue  # updated in shared mode after the legacy write: the newer row wins, as it should
            differing = [c for c in spec.value_names if row.get(c) != version.get(c)]
            if row[DELETED] or differing or row[TS] != version[TS]:
                raise CorruptLegacyFile(f"verification failed: {spec.name} row {key} differs in {differing}")

    # -- one schema ------------------------------------------------------------------------------
    def migrate_schema(self, schema: SchemaConfig) -> SchemaResult | None:
        files = self.legacy_files(schema.name)
        if not files:
            return None
        result = SchemaResult(schema.name)
        with tempfile.TemporaryDirectory(prefix="aperio-migrate-") as tmp:
            workdir = Path(tmp)
            try:
                work: list[tuple[str, list[dict[str, Any]], LegacyFile]] = []
                status_file = files.get(layout.LEGACY_PARTITION_STATUS)
                if status_file is not None:
                    self.progress(f"{schema.name}: reading {status_file.location}")
                    copy = fetch(status_file, workdir, with_wal=True)
                    status, completion = read_partition_status(copy, status_file.location)
                    work += [("partition_status", status, status_file), ("table_completion", completion, status_file)]
                conversions_file = files.get(layout.LEGACY_CONVERSIONS)
                if conversions_file is not None:
                    self.progress(f"{schema.name}: reading {conversions_file.location}")
                    copy = fetch(conversions_file, workdir)
                    work.append(("conversions", read_conversions(copy, conversions_file.location), conversions_file))
                model_file = files.get(layout.LEGACY_GENERATED_MODEL)
                if model_file is not None:
                    fetch(model_file, workdir)
                    result.notes.append("the legacy generated model is regenerated by the next refresh")
                if not self.dry_run:
                    for file in files.values():  # a backup before anything is written
                        result.archived.append(self._backup(file, schema.name))
                result.kinds = [self._migrate_kind(schema.name, kind, rows, src) for kind, rows, src in work]
                if not self.dry_run and self.archive:
                    for file in files.values():
                        self._remove_original(file)
                elif not self.dry_run:
                    result.notes.append("legacy files left in place (--no-archive); a copy is in the archive")
            except CorruptLegacyFile as exc:
                result.error = str(exc)
            except FileNotFoundError as exc:  # another worker finished this schema meanwhile
                if not self._all_recorded(schema.name):
                    raise
                result.notes.append(f"migrated by another worker meanwhile ({exc.filename or exc})")
        return result

    def _all_recorded(self, schema: str) -> bool:
        return all(self.storage.exists(self._record_path(f"{schema}-{kind}")) for kind in KINDS)

    def migrate_catalog(self) -> SchemaResult | None:
        file = self.find(*layout.LEGACY_CATALOG.split("/"))
        if file is None:
            return None
        result = SchemaResult("catalog")
        names = {s.name for s in self.lake.schemas()}
        with tempfile.TemporaryDirectory(prefix="aperio-migrate-") as tmp:
            try:
                catalog = read_catalog(fetch(file, Path(tmp), with_wal=True), file.location)
                views = [(s, v, sql) for s, v, sql in catalog.user_views if s in names]
                result.notes += [
                    f"view {s}.{v} skipped: schema {s} is not in the configuration"
                    for s, v, _ in catalog.user_views
                    if s not in names
                ]
                result.notes += [
                    f"generated view {s}.{v} is regenerated from the generated models"
                    for s, v in catalog.generated_views
                ]
                result.notes += [
                    f"macro {m} is not migrated (re-create it in a user view if needed)" for m in catalog.macros
                ]
                if self._recorded("catalog-views", file.checksum):
                    status = "already-migrated"
                elif self.dry_run:
                    status = "would-migrate"
                else:
                    status = "migrated"
                    result.archived.append(self._backup(file, None))
                    store = ViewStore(self.lake)
                    existing = {(v.schema_name, v.view_name) for v in store.list()}
                    for schema, name, sql in views:
                        if (schema, name) not in existing:  # a view already defined in shared mode wins
                            store.add(schema, name, sql, origin="migrated")
                    self._record("catalog-views", source=file.location, checksum=file.checksum, rows=len(views))
                result.kinds.append(KindResult("views", file.location, len(views), status))
                if not self.dry_run and self.archive:
                    if not result.archived:  # migrated earlier with --no-archive: back up before removing
                        result.archived.append(self._backup(file, None))
                    self._remove_original(file)
            except CorruptLegacyFile as exc:
                result.error = str(exc)
            except FileNotFoundError:  # another worker finished the catalog meanwhile
                if not self.storage.exists(self._record_path("catalog-views")):
                    raise
                result.notes.append("migrated by another worker meanwhile")
        return result


def migrate(
    lake: Lake,
    schema: str | None = None,
    *,
    dry_run: bool = False,
    archive: bool = True,
    progress: Callable[[str], None] | None = None,
) -> MigrationReport:
    """Migrate the legacy state of every shared-mode schema (or one); safe to run from many workers."""
    migrator = Migrator(lake, dry_run=dry_run, archive=archive, progress=progress)
    report = MigrationReport(dry_run)
    for schema_config in lake.select_schemas(schema):
        if not is_shared(lake, schema_config.name):
            continue  # local-mode schemas keep their legacy state (mixed lakes during a rollout)
        result = migrator.migrate_schema(schema_config)
        if result is not None:
            report.schemas.append(result)
    if schema is None:
        catalog = migrator.migrate_catalog()
        if catalog is not None:
            report.schemas.append(catalog)
    return report


def legacy_fingerprint(lake: Lake) -> str | None:
    """Identifies the legacy state present (paths, sizes, mtimes); None when there is none."""
    migrator = Migrator(lake, dry_run=True)
    parts = []
    for schema in lake.schemas():
        if is_shared(lake, schema.name):
            for file in migrator.legacy_files(schema.name).values():
                info = file.storage.info(file.location)
                if info is not None:
                    parts.append(f"{file.location}:{info.size}:{info.mtime}:{info.etag}")
    if not parts:
        return None
    return hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()[:16]

"""Whole-lake state maintenance: compaction, health, and the doctor (DESIGN §5 "Bad files", §10)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from aperio_assets import layout
from aperio_assets.errors import AperioError
from aperio_assets.lake import Lake
from aperio_assets.state.access import is_shared, schema_table
from aperio_assets.state.duckdb_tracker import DuckDBPartitionStatusStore
from aperio_assets.state.table import StateTable, TableStats
from aperio_assets.state.tables import SCHEMA_TABLES, VIEWS

ROOT = None  # the schema of lake-wide state tables (catalog/views)


@dataclass
class LakeStateTable:
    schema: str | None
    table: StateTable


def shared_state_tables(lake: Lake, schema: str | None = None) -> list[LakeStateTable]:
    """Every shared-mode state table of the lake (or of one schema)."""
    found = []
    for schema_config in lake.select_schemas(schema):
        if is_shared(lake, schema_config.name):
            found += [
                LakeStateTable(schema_config.name, schema_table(lake, schema_config.name, spec))
                for spec in SCHEMA_TABLES.values()
            ]
    if schema is None:
        found.append(LakeStateTable(ROOT, schema_table(lake, ROOT, VIEWS)))
    return found


def compact_lake(lake: Lake, schema: str | None = None) -> list[dict[str, Any]]:
    results = []
    for entry in shared_state_tables(lake, schema):
        result = entry.table.compact()
        results.append({"schema": entry.schema, **asdict(result)})
    return results


@dataclass(frozen=True)
class TableHealth:
    """A state table's figures and the small-file limit it is held to (0: none, a legacy file)."""

    stats: TableStats
    small_file_limit: int


def state_health(lake: Lake, schema: str | None = None) -> dict[str | None, dict[str, TableHealth]]:
    """Per schema (None: lake-wide) and state table: rows, files, small files, bytes, unreadable
    files. Local-mode schemas report their DuckDB file, without creating or upgrading it."""
    report: dict[str | None, dict[str, TableHealth]] = {}
    for entry in shared_state_tables(lake, schema):
        report.setdefault(entry.schema, {})[entry.table.spec.name] = TableHealth(
            entry.table.stats(), entry.table.max_small_files
        )
    for schema_config in lake.select_schemas(schema):
        if not is_shared(lake, schema_config.name):
            path = lake.local_state_path(schema_config.name, layout.LEGACY_PARTITION_STATUS)
            if os.path.exists(path):
                for stats in DuckDBPartitionStatusStore(path).stats():
                    report.setdefault(schema_config.name, {})[stats.table] = TableHealth(stats, 0)
    return report


@dataclass
class Problem:
    schema: str | None
    table: str
    kind: str  # unreadable-file | too-many-small-files | damaged-local-store
    detail: str
    path: str | None = None
    repaired: bool = False
    repair: str | None = None


@dataclass
class DoctorReport:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def unrepaired(self) -> list[Problem]:
        return [p for p in self.problems if not p.repaired]

    def to_dict(self) -> dict[str, Any]:
        return {"problems": [asdict(p) for p in self.problems], "warnings": self.warnings, "ok": not self.unrepaired}


def quarantine_path(lake: Lake, entry: LakeStateTable, name: str) -> str:
    return lake.storage.aperio_path(
        ROOT, f"{layout.QUARANTINE_DIR}/{entry.schema or 'catalog'}/{entry.table.spec.name}/{name}"
    )


def doctor(lake: Lake, *, repair: bool = False) -> DoctorReport:
    """Find unreadable state files, tables over their small-file limit and damaged local stores;
    with ``repair``, quarantine the files (moved to ``_quarantine/``) and compact the tables."""
    report = DoctorReport()
    for entry in shared_state_tables(lake):
        table = entry.table
        table.refresh(force=True)
        for name, reason in sorted(table.bad_files.items()):
            path = lake.storage.join(table.directory, name)
            problem = Problem(entry.schema, table.spec.name, "unreadable-file", reason, path)
            if repair:
                target = quarantine_path(lake, entry, name)
                lake.storage.move(path, target)
                problem.repaired, problem.repair = True, f"moved to {target}"
            report.problems.append(problem)
        small = table.small_file_count()
        if small > table.max_small_files:
            problem = Problem(
                entry.schema,
                table.spec.name,
                "too-many-small-files",
                f"{small} small files (limit {table.max_small_files})",
                table.directory,
            )
            if repair:
                result = table.compact()
                problem.repaired, problem.repair = True, f"compacted {result.files_read} files into one"
            report.problems.append(problem)
    for schema_config in lake.schemas():
        if not is_shared(lake, schema_config.name):
            path = lake.local_state_path(schema_config.name, layout.LEGACY_PARTITION_STATUS)
            if os.path.exists(path):
                try:
                    DuckDBPartitionStatusStore(path).stats()
                except AperioError as exc:
                    report.problems.append(
                        Problem(schema_config.name, layout.PARTITION_STATUS, "damaged-local-store", str(exc), path)
                    )
        else:
            legacy = [
                name
                for name in (layout.LEGACY_PARTITION_STATUS, layout.LEGACY_CONVERSIONS)
                if lake.storage.exists(lake.storage.aperio_path(schema_config.name, name))
            ]
            if legacy:
                report.warnings.append(
                    f"schema {schema_config.name}: legacy state not migrated yet ({', '.join(legacy)})"
                )
    return report

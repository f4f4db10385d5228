"""Reading legacy single-node state (DESIGN §4) in every shape it comes in, from copies: a legacy file
is never opened for writing, never locked against its old owner, never changed."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from aperio_assets.errors import AperioError
from aperio_assets.state.keys import canonical_key
from aperio_assets.state.legacy_schema import PARTITION_STATUS_COLUMNS, TABLE_COMPLETION_COLUMNS
from aperio_assets.state.lineage import parse_legacy_conversions
from aperio_assets.storage import StorageProvider

# A view the legacy catalog generated: a plain SELECT * over one scan of files. Anything else is a
# user's view and is kept.
GENERATED_VIEW = re.compile(
    r"^\s*SELECT\s+\*\s+FROM\s+(read_parquet|parquet_scan|read_csv_auto|read_csv|"
    r"read_json_auto|read_json|read_ndjson|iceberg_scan)\s*\(",
    re.IGNORECASE,
)
_VIEW_BODY = re.compile(r"\bAS\s+(?=(SELECT|WITH|FROM|VALUES|\()\b)", re.IGNORECASE)


class CorruptLegacyFile(AperioError):
    """A legacy file that cannot be read: that schema's migration stops, the file stays."""


@dataclass
class LegacyFile:
    location: str  # where it is (local path or s3:// URL)
    storage: StorageProvider
    local_copy: Path | None = None
    checksum: str = ""


def fetch(file: LegacyFile, workdir: Path, with_wal: bool = False) -> Path:
    """Copy a legacy file (and its WAL) into ``workdir``; record its checksum."""
    target = workdir / f"{len(list(workdir.iterdir()))}-{file.location.rsplit('/', 1)[-1]}"
    digest = hashlib.sha256()
    for suffix in ("", ".wal") if with_wal else ("",):
        source, copy = file.location + suffix, Path(str(target) + suffix)
        local = file.storage.local_path(source)
        try:
            if local is not None:
                shutil.copyfile(local, copy)
            else:
                file.storage.download(source, str(copy))
        except FileNotFoundError:
            if suffix:
                continue  # no WAL: the database was checkpointed
            raise
        digest.update(copy.read_bytes())
    file.local_copy, file.checksum = target, digest.hexdigest()
    return target


def _open(path: Path, what: str) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(str(path))  # a private copy: WAL replays, the original is untouched
    except duckdb.Error as exc:
        raise CorruptLegacyFile(f"{what} cannot be read: {str(exc).strip().splitlines()[0]}") from None


def read_partition_status(copy: Path, what: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Status rows (keys canonicalised, rows differing only in key order merged: the latest
    ``processed_at`` wins) and table-completion rows; late columns or tables missing → NULL / none."""
    con = _open(copy, what)
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "partition_status" not in tables:
            raise CorruptLegacyFile(f"{what} has no partition_status table")
        status: dict[tuple[str, str], dict[str, Any]] = {}
        for row in _rows(con, "partition_status", PARTITION_STATUS_COLUMNS):
            try:
                row["incremental_key_values"] = canonical_key(row["incremental_key_values"])
            except ValueError as exc:
                raise CorruptLegacyFile(f"{what}: {exc}") from None
            row["error_status"] = bool(row["error_status"])
            key = (row["alternate_name"], row["incremental_key_values"])
            if key not in status or status[key]["processed_at"] < row["processed_at"]:
                status[key] = row
        completion = _rows(con, "table_completion", TABLE_COMPLETION_COLUMNS) if "table_completion" in tables else []
        return list(status.values()), completion
    except duckdb.Error as exc:
        raise CorruptLegacyFile(f"{what} cannot be read: {str(exc).strip().splitlines()[0]}") from None
    finally:
        con.close()


def _rows(con: duckdb.DuckDBPyConnection, table: str, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    have = {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}
    select = ", ".join(c if c in have else f"NULL AS {c}" for c in columns)
    return [dict(zip(columns, v, strict=True)) for v in con.execute(f"SELECT {select} FROM {table}").fetchall()]


def read_conversions(copy: Path, what: str) -> list[dict[str, Any]]:
    try:
        text = copy.read_text(encoding="utf-8")
        return list(parse_legacy_conversions(json.loads(text) if text.strip() else {}, source=what).values())
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise CorruptLegacyFile(f"{what} cannot be read: {exc}") from None


@dataclass
class LegacyCatalog:
    user_views: list[tuple[str, str, str]] = field(default_factory=list)  # (schema, view, SELECT …)
    generated_views: list[tuple[str, str]] = field(default_factory=list)
    macros: list[str] = field(default_factory=list)


def view_body(create_sql: str) -> str:
    """``CREATE VIEW "s"."v" AS SELECT …;`` → ``SELECT …``."""
    match = _VIEW_BODY.search(create_sql)
    if match is None:
        raise ValueError(f"cannot find the query of {create_sql[:80]!r}")
    return create_sql[match.end() :].strip().rstrip(";").strip()


def read_catalog(copy: Path, what: str) -> LegacyCatalog:
    """Views and macros of the persistent catalog (secrets are never read)."""
    con = _open(copy, what)
    try:
        catalog = LegacyCatalog()
        for schema, name, sql in con.execute(
            "SELECT schema_name, view_name, sql FROM duckdb_views() WHERE NOT internal ORDER BY ALL"
        ).fetchall():
            body = view_body(sql)
            if GENERATED_VIEW.match(body):
                catalog.generated_views.append((schema, name))
            else:
                catalog.user_views.append((schema, name, body))
        catalog.macros = [
            f"{s}.{n}"
            for s, n in con.execute(
                "SELECT DISTINCT schema_name, function_name FROM duckdb_functions() WHERE function_type LIKE '%macro' "
                "AND NOT internal ORDER BY ALL"
            ).fetchall()
        ]
        return catalog
    except (duckdb.Error, ValueError) as exc:
        raise CorruptLegacyFile(f"{what} cannot be read: {str(exc).strip().splitlines()[0]}") from None
    finally:
        con.close()

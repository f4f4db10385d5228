"""Conversion lineage (DESIGN §6): which raw file became which converted file, and when.

Shared mode keeps it in the ``conversions`` state table (no lock at all). Local mode keeps the
legacy ``.conversions.json``: reads take a shared lock on ``.conversions.json.lock``, writes an
exclusive one, and a write replaces the file atomically (temp file, then rename).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from aperio_assets.errors import StorageError
from aperio_assets.state.table import StateTable

Row = dict[str, Any]

# Legacy record field → lineage column (first listed wins when a record has several).
LEGACY_FIELDS: tuple[tuple[str, str], ...] = (
    ("sourceFile", "source_path"),
    ("originalFile", "source_path"),
    ("targetPath", "target_path"),
    ("convertedFile", "target_path"),
    ("sourceModified", "source_modified"),
    ("convertedAt", "converted_at"),
    ("timestamp", "converted_at"),
    ("conversionType", "conversion_type"),
    ("rowCount", "row_count"),
    ("contentLength", "source_size"),
    ("etag", "source_etag"),
    ("tableName", "table_name"),
    ("error", "error"),
)
RECORD_FIELDS = frozenset(
    {name for name, _ in LEGACY_FIELDS}
    | {
        "tableType",
        "sourceType",
        "parquetCacheFile",
        "viewScanPattern",
        "refreshEnabled",
        "refreshInterval",
        "contentType",
        "tableConfig",
        "snapshotId",
        "baseline",
        "lastChangeCheck",
        "viewNeedsRefresh",
    }
)
COLUMNS = (
    "source_path",
    "target_path",
    "source_modified",
    "converted_at",
    "conversion_type",
    "row_count",
    "source_size",
    "source_etag",
    "table_name",
    "error",
    "extra",
)
_INTEGER_COLUMNS = frozenset({"source_modified", "converted_at", "row_count", "source_size"})


def _integer(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def row_from_record(key: str, record: Mapping[str, Any]) -> Row:
    """A legacy record (any of the fields of DESIGN §4, any may be missing) as a lineage row; fields
    without a column are kept, as JSON, in ``extra``."""
    row: Row = dict.fromkeys(COLUMNS)
    used = set()
    for name, column in LEGACY_FIELDS:
        if name in record and row[column] is None and record[name] is not None:
            value = record[name]
            row[column] = _integer(value) if column in _INTEGER_COLUMNS else str(value)
            used.add(name)
    if row["source_path"] is None:
        row["source_path"] = key
    extra = {k: v for k, v in record.items() if k not in used}
    row["extra"] = json.dumps(extra, sort_keys=True, ensure_ascii=False) if extra else None
    return row


def record_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A lineage row in the legacy record shape (the extra fields restored)."""
    record = json.loads(row["extra"]) if row.get("extra") else {}
    record.update(
        {
            "sourceFile": row["source_path"],
            "convertedFile": row.get("target_path"),
            "tableName": row.get("table_name"),
            "conversionType": row.get("conversion_type"),
            "rowCount": row.get("row_count"),
            "contentLength": row.get("source_size"),
            "etag": row.get("source_etag"),
            "sourceModified": row.get("source_modified"),
            "convertedAt": row.get("converted_at"),
            "timestamp": row.get("converted_at"),
            "error": row.get("error"),
        }
    )
    return record


def _looks_like_record(value: Any) -> bool:
    return isinstance(value, dict) and bool(RECORD_FIELDS & value.keys())


def parse_legacy_conversions(document: Any, *, source: str = ".conversions.json") -> dict[str, Row]:
    """Every shape of ``.conversions.json`` (DESIGN §4) → lineage rows by source path.

    ``{"conversions": {path: {...}}}``, the record map ``{key: record}`` and the namespaced
    ``{"s3://bucket": {key: record}}``. Raises ValueError naming ``source`` for anything else.
    """
    if not isinstance(document, dict):
        raise ValueError(f"{source}: expected a JSON object at the top level")
    if set(document) == {"conversions"} and isinstance(document["conversions"], dict):
        items: Iterable[tuple[str, Any]] = document["conversions"].items()
    else:
        flattened: list[tuple[str, Any]] = []
        for key, value in document.items():
            if _looks_like_record(value):
                flattened.append((key, value))
            elif isinstance(value, dict) and all(_looks_like_record(v) for v in value.values()):
                flattened.extend(value.items())  # namespaced: {"s3://bucket": {key: record}}
            else:
                raise ValueError(f"{source}: entry {key!r} is neither a conversion record nor a namespace")
        items = flattened
    rows: dict[str, Row] = {}
    for key, record in items:
        if not isinstance(record, dict):
            raise ValueError(f"{source}: entry {key!r} is not an object")
        row = row_from_record(key, record)
        rows[row["source_path"]] = row
    return rows


class ConversionLineage(ABC):
    mode: str

    @abstractmethod
    def records(self) -> dict[str, Row]:
        """Every current lineage row, by source path."""

    @abstractmethod
    def record_many(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Record conversions (one write for the whole batch)."""

    @abstractmethod
    def remove(self, source_paths: Sequence[str]) -> None:
        """Forget raw files that are gone."""

    def get(self, source_path: str) -> Row | None:
        return self.records().get(source_path)


class ParquetLineage(ConversionLineage):
    mode = "shared"

    def __init__(self, table: StateTable) -> None:
        self.table = table

    def records(self) -> dict[str, Row]:
        return {r["source_path"]: {c: r.get(c) for c in COLUMNS} for r in self.table.rows()}

    def get(self, source_path: str) -> Row | None:
        row = self.table.get(source_path)
        return None if row is None else {c: row.get(c) for c in COLUMNS}

    def record_many(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            self.table.write(upserts=[{c: r.get(c) for c in COLUMNS} for r in rows])

    def remove(self, source_paths: Sequence[str]) -> None:
        if source_paths:
            self.table.write(deletes=list(source_paths))


class JsonLineage(ConversionLineage):
    """The legacy ``.conversions.json`` (written in the record-map shape; all shapes are read)."""

    mode = "local"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _read(self) -> dict[str, Row]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            return parse_legacy_conversions(json.loads(text) if text.strip() else {}, source=str(self.path))
        except (json.JSONDecodeError, ValueError) as exc:
            raise StorageError(f"{self.path} is not a valid conversions file ({exc}); it is left as it is") from None

    def _write(self, rows: dict[str, Row]) -> None:
        document = {path: record_from_row(row) for path, row in sorted(rows.items())}
        temp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(temp, "w", encoding="utf-8") as f:
                json.dump(document, f, indent=2, ensure_ascii=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    def records(self) -> dict[str, Row]:
        with self._locked(exclusive=False):
            return self._read()

    def record_many(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        with self._locked(exclusive=True):
            current = self._read()
            for row in rows:
                current[row["source_path"]] = {c: row.get(c) for c in COLUMNS}
            self._write(current)

    def remove(self, source_paths: Sequence[str]) -> None:
        if not source_paths:
            return
        with self._locked(exclusive=True):
            current = self._read()
            for path in source_paths:
                current.pop(path, None)
            self._write(current)


def lineage_columns(row: Row) -> list[tuple[str, str]] | None:
    """The columns a conversion produced (kept in the lineage row's ``extra``)."""
    try:
        columns = json.loads(row.get("extra") or "{}").get("columns")
    except (ValueError, AttributeError):
        return None
    return [(str(name), str(dtype)) for name, dtype in columns] if isinstance(columns, list) else None


def columns_digest(columns: Sequence[tuple[str, str]]) -> str:
    """A short digest of a file's columns (names and types, in order), as the model records it."""
    return hashlib.sha256(json.dumps([list(c) for c in columns], ensure_ascii=False).encode()).hexdigest()[:16]

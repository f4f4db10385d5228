"""The ``IncrementalTracker`` interface (DESIGN §6) and the semantics both stores share.

Each store supplies a handful of storage primitives; everything users call — and so every rule of
the legacy store (error rows still count as processed, TTL on ``processed_at``, canonical batch
keys, 1000-character error messages) — is written once, here.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from aperio_assets.state.keys import BatchKey, canonical_key, parse_key
from aperio_assets.state.legacy_schema import ERROR_MESSAGE_LIMIT

Row = dict[str, Any]
TTL = float | int | timedelta | None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _ttl_ms(ttl: TTL) -> int | None:
    if ttl is None:
        return None
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
    return int(seconds * 1000)


def truncate_error(message: str | None) -> str | None:
    return None if message is None else str(message)[:ERROR_MESSAGE_LIMIT]


def status_row(record: Mapping[str, Any], processed_at: int) -> Row:
    """A ``mark_many`` record as a partition_status row (legacy columns, canonical batch key)."""
    error = record.get("error_message")
    return {
        "alternate_name": record["alternate"],
        "incremental_key_values": canonical_key(record["key_values"]),
        "source_table": record["source_table"],
        "target_pattern": record.get("target_pattern"),
        "processed_at": processed_at,
        "row_count": record.get("row_count"),
        "error_status": error is not None,
        "error_message": truncate_error(error),
        "phase": record.get("phase"),
    }


class IncrementalTracker(ABC):
    """Partition processing status and table completion for one schema."""

    mode: str

    # -- primitives each store implements --------------------------------------------------------
    @abstractmethod
    def _status_row(self, alternate: str, key: str) -> Row | None: ...

    @abstractmethod
    def _status_rows(self, alternate: str) -> list[Row]: ...

    @abstractmethod
    def _existing_keys(self, alternate: str, keys: Sequence[str]) -> set[str]: ...

    @abstractmethod
    def _write_status(self, rows: list[Row]) -> None: ...

    @abstractmethod
    def _delete_status(self, alternate: str, keys: Sequence[str]) -> None: ...

    @abstractmethod
    def _completion_row(self, pipeline: str) -> Row | None: ...

    @abstractmethod
    def _write_completion(self, row: Row) -> None: ...

    @abstractmethod
    def _delete_completions(self, pipelines: Sequence[str] | None) -> None:
        """Delete these pipelines' completion rows, or all of them for None."""

    # -- partition status ------------------------------------------------------------------------
    def is_processed(self, alternate: str, source_table: str, key_values: BatchKey, ttl: TTL = None) -> bool:
        """Whether the batch has a status row (an error row counts: the legacy semantics), younger
        than ``ttl`` (seconds or a timedelta) when one is given."""
        row = self._status_row(alternate, canonical_key(key_values))
        if row is None:
            return False
        limit = _ttl_ms(ttl)
        return limit is None or row["processed_at"] >= now_ms() - limit

    def mark_many(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Record a whole batch in ONE write. Each record: ``alternate``, ``source_table``,
        ``key_values`` and optionally ``target_pattern``, ``row_count``, ``phase``,
        ``error_message`` (which makes it an error row). Returns how many were written."""
        stamp = now_ms()
        rows = [status_row(r, stamp) for r in records]
        if rows:
            self._write_status(rows)
        return len(rows)

    def mark_processed(
        self,
        alternate: str,
        source_table: str,
        key_values: BatchKey,
        target_pattern: str | None = None,
        row_count: int | None = None,
        phase: str | None = None,
    ) -> None:
        self.mark_many(
            [
                {
                    "alternate": alternate,
                    "source_table": source_table,
                    "key_values": key_values,
                    "target_pattern": target_pattern,
                    "row_count": row_count,
                    "phase": phase,
                }
            ]
        )

    def mark_processed_with_error(
        self, alternate: str, source_table: str, key_values: BatchKey, error_message: str
    ) -> None:
        self.mark_many(
            [
                {
                    "alternate": alternate,
                    "source_table": source_table,
                    "key_values": key_values,
                    "error_message": error_message or "error",
                }
            ]
        )

    def filter_unprocessed(self, alternate: str, source_table: str, combos: Sequence[BatchKey]) -> list[int]:
        """Indices of the combos that are not processed yet, in order."""
        keys = [canonical_key(c) for c in combos]
        existing = self._existing_keys(alternate, keys) if keys else set()
        return [i for i, k in enumerate(keys) if k not in existing]

    def get_processed_key_values(self, alternate: str) -> list[dict[str, str]]:
        rows = sorted(self._status_rows(alternate), key=lambda r: r["incremental_key_values"])
        return [parse_key(r["incremental_key_values"]) for r in rows]

    def status_rows(self, alternate: str) -> list[Row]:
        """Every current status row of an alternate (the legacy columns)."""
        return self._status_rows(alternate)

    def invalidate(self, alternate: str, key_values: BatchKey) -> None:
        self._delete_status(alternate, [canonical_key(key_values)])

    def invalidate_all(self, alternate: str) -> int:
        keys = [r["incremental_key_values"] for r in self._status_rows(alternate)]
        if keys:
            self._delete_status(alternate, keys)
        return len(keys)

    def apply_status(self, upserts: Sequence[Row] = (), deletes: Sequence[tuple[str, str]] = ()) -> None:
        """Write whole status rows (legacy columns, canonical keys, their own ``processed_at``) and
        delete ``(alternate, key)`` pairs: the raw form the state IO (``state.access``) uses."""
        if upserts:
            self._write_status(list(upserts))
        by_alternate: dict[str, list[str]] = {}
        for alternate, key in deletes:
            by_alternate.setdefault(alternate, []).append(key)
        for alternate, keys in by_alternate.items():
            self._delete_status(alternate, keys)

    # -- table completion ------------------------------------------------------------------------
    def is_table_complete(self, pipeline: str, signature: str) -> bool:
        row = self._completion_row(pipeline)
        return row is not None and row["signature"] == signature

    def mark_table_complete(
        self,
        pipeline: str,
        signature: str,
        config_hash: str | None = None,
        row_count: int = 0,
        source_file_watermark: int = 0,
    ) -> None:
        self._write_completion(
            {
                "pipeline_name": pipeline,
                "signature": signature,
                "config_hash": config_hash,
                "row_count": row_count,
                "source_file_watermark": source_file_watermark,
                "completed_at": now_ms(),
            }
        )

    def invalidate_table_completion(self, pipeline: str) -> None:
        self._delete_completions([pipeline])

    def clear_all_completions(self) -> None:
        self._delete_completions(None)

    def apply_completions(self, upserts: Sequence[Row] = (), deletes: Sequence[str] = ()) -> None:
        """Write whole completion rows and delete pipelines' rows (see ``apply_status``)."""
        for row in upserts:
            self._write_completion(dict(row))
        if deletes:
            self._delete_completions(list(deletes))

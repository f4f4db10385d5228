"""Local mode: the legacy single-node store, ``<schema>/.partition_status.duckdb`` (DESIGN §4).

The DuckDB file lock is held only for one operation (connect, work, close), so several processes on
one host can share the file; a process that finds it locked waits and retries. A damaged file is
never deleted or rewritten: opening it raises a clear error.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa

from aperio_assets.errors import StorageError
from aperio_assets.state.keys import canonical_key
from aperio_assets.state.legacy_schema import (
    PARTITION_STATUS_COLUMNS,
    PARTITION_STATUS_DDL,
    TABLE_COMPLETION_COLUMNS,
    TABLE_COMPLETION_DDL,
    UPGRADE_STATEMENTS,
)
from aperio_assets.state.table import TableStats
from aperio_assets.state.tracker import IncrementalTracker, Row

_STATUS_SELECT = f"SELECT {', '.join(PARTITION_STATUS_COLUMNS)} FROM partition_status"
_COMPLETION_SELECT = f"SELECT {', '.join(TABLE_COMPLETION_COLUMNS)} FROM table_completion"
_PS_SCHEMA = pa.schema(
    [
        ("alternate_name", pa.string()),
        ("incremental_key_values", pa.string()),
        ("source_table", pa.string()),
        ("target_pattern", pa.string()),
        ("processed_at", pa.int64()),
        ("row_count", pa.int64()),
        ("error_status", pa.bool_()),
        ("error_message", pa.string()),
        ("phase", pa.string()),
    ]
)


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


# DuckDB creates a database file, then writes its headers (three blocks of 4 KiB, "DUCK" at byte 8).
# Another process opening it in between is told the file "is not a valid DuckDB database file". An
# empty file, or a short one that begins as DuckDB's do, is being created: tried again for this long.
# Any other invalid file is refused at once.
DUCKDB_HEADERS_BYTES = 3 * 4096
CREATION_SECONDS = 10.0


def _is_being_created(exc: Exception, path: Path) -> bool:
    if "not a valid duckdb database file" not in str(exc).lower():
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(DUCKDB_HEADERS_BYTES)
    except FileNotFoundError:
        return True  # gone meanwhile: the next try creates it
    except OSError:
        return False
    return not head or (len(head) < DUCKDB_HEADERS_BYTES and head[8:12] == b"DUCK")


class DuckDBPartitionStatusStore(IncrementalTracker):
    mode = "local"

    def __init__(self, path: str | Path, *, lock_timeout_seconds: float = 120.0) -> None:
        self.path = Path(path)
        self.lock_timeout_seconds = lock_timeout_seconds
        self._ready = False
        self._lock = threading.Lock()  # one DuckDB connection per process at a time

    @contextmanager
    def _connect(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """One connection for one operation. ``read_only`` neither creates nor upgrades the file."""
        with self._lock:
            if not read_only:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            delay = 0.005
            while True:
                try:
                    con = duckdb.connect(str(self.path), read_only=read_only)
                    break
                except duckdb.Error as exc:
                    waited = time.monotonic() - started
                    if (_is_lock_error(exc) and waited < self.lock_timeout_seconds) or (
                        _is_being_created(exc, self.path) and waited < CREATION_SECONDS
                    ):
                        time.sleep(delay * (0.5 + random.random()))
                        delay = min(delay * 2, 0.25)
                        continue
                    raise StorageError(f"cannot open {self.path}: {exc} (the file is left as it is)") from None
            try:
                if not self._ready and not read_only:
                    self._prepare(con)
                    self._ready = True
                yield con
            except duckdb.Error as exc:
                raise StorageError(f"{self.path}: {exc}") from None
            finally:
                con.close()

    @staticmethod
    def _prepare(con: duckdb.DuckDBPyConnection) -> None:
        """Create the tables, upgrade an old file in place, and canonicalise legacy batch keys
        (merging rows that differ only in key order: the latest ``processed_at`` wins)."""
        tables = {
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
            ).fetchall()
        }
        con.execute("BEGIN TRANSACTION")
        if "partition_status" not in tables:
            con.execute(PARTITION_STATUS_DDL)
        else:
            for statement in UPGRADE_STATEMENTS:
                con.execute(statement)
        if "table_completion" not in tables:
            con.execute(TABLE_COMPLETION_DDL)
        k = "incremental_key_values"
        unsorted = con.execute(
            f"{_STATUS_SELECT} WHERE json_valid({k}) AND (json_keys({k}) <> list_sort(json_keys({k})) "
            f"OR {k} LIKE '%\": %' OR {k} LIKE '%, \"%' OR {k} LIKE '{{ %')"
        ).fetchall()
        where = "WHERE alternate_name = ? AND incremental_key_values = ?"
        for values in unsorted:
            row = dict(zip(PARTITION_STATUS_COLUMNS, values, strict=True))
            legacy = row["incremental_key_values"]
            row["incremental_key_values"] = canonical_key(legacy)
            con.execute(f"DELETE FROM partition_status {where}", [row["alternate_name"], legacy])
            current = con.execute(
                f"SELECT processed_at FROM partition_status {where}",
                [row["alternate_name"], row["incremental_key_values"]],
            ).fetchone()
            if current is None or current[0] < row["processed_at"]:
                con.execute(
                    f"INSERT OR REPLACE INTO partition_status ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                    list(row.values()),
                )
        con.execute("COMMIT")

    def stats(self) -> list[TableStats]:
        """Rows per table and the file's size (the file is only read)."""
        with self._connect(read_only=True) as con:
            tables = {
                r[0]
                for r in con.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
                ).fetchall()
            }
            counts = {
                t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("partition_status", "table_completion")
                if t in tables
            }
        size = sum(p.stat().st_size for p in (self.path, self.path.with_name(self.path.name + ".wal")) if p.exists())
        return [
            TableStats(table, rows, 0, 1, 0, size if table == "partition_status" else 0)
            for table, rows in counts.items()
        ]

    def all_rows(self, table: str) -> list[Row]:
        """Every row of ``partition_status`` or ``table_completion`` (read-only; for the catalog)."""
        columns = {"partition_status": PARTITION_STATUS_COLUMNS, "table_completion": TABLE_COMPLETION_COLUMNS}[table]
        if not self.path.exists():
            return []  # nothing tracked yet (a read never creates the file)
        with self._connect(read_only=True) as con:
            present = {
                r[0]
                for r in con.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
                ).fetchall()
            }
            if table not in present:
                return []
            have = {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}
            select = ", ".join(c if c in have else f"NULL AS {c}" for c in columns)
            values = con.execute(f"SELECT {select} FROM {table}").fetchall()
        return [dict(zip(columns, v, strict=True)) for v in values]

    # -- primitives ------------------------------------------------------------------------------
    def _status_row(self, alternate: str, key: str) -> Row | None:
        with self._connect() as con:
            cur = con.execute(
                f"{_STATUS_SELECT} WHERE alternate_name = ? AND incremental_key_values = ?", [alternate, key]
            )
            values = cur.fetchone()
        return dict(zip(PARTITION_STATUS_COLUMNS, values, strict=True)) if values else None

    def _status_rows(self, alternate: str) -> list[Row]:
        with self._connect() as con:
            values = con.execute(f"{_STATUS_SELECT} WHERE alternate_name = ?", [alternate]).fetchall()
        return [dict(zip(PARTITION_STATUS_COLUMNS, v, strict=True)) for v in values]

    def _existing_keys(self, alternate: str, keys: Sequence[str]) -> set[str]:
        wanted = pa.table({"k": pa.array(list(keys), pa.string())})
        with self._connect() as con:
            con.register("wanted_keys", wanted)
            found = con.execute(
                "SELECT p.incremental_key_values FROM partition_status p JOIN wanted_keys w "
                "ON p.incremental_key_values = w.k WHERE p.alternate_name = ?",
                [alternate],
            ).fetchall()
        return {r[0] for r in found}

    def _write_status(self, rows: list[Row]) -> None:
        batch = pa.Table.from_pylist(rows, schema=_PS_SCHEMA)
        columns = ", ".join(PARTITION_STATUS_COLUMNS)
        with self._connect() as con:
            con.register("status_batch", batch)
            # One statement per batch; rows repeated within the batch: the last one wins.
            con.execute(
                f"INSERT OR REPLACE INTO partition_status ({columns}) SELECT {columns} FROM "
                "(SELECT *, row_number() OVER (PARTITION BY alternate_name, incremental_key_values "
                "ORDER BY ord DESC) AS rn FROM (SELECT *, row_number() OVER () AS ord "
                "FROM status_batch)) WHERE rn = 1"
            )

    def _delete_status(self, alternate: str, keys: Sequence[str]) -> None:
        doomed = pa.table({"k": pa.array(list(keys), pa.string())})
        with self._connect() as con:
            con.register("doomed_keys", doomed)
            con.execute(
                "DELETE FROM partition_status WHERE alternate_name = ? AND incremental_key_values "
                "IN (SELECT k FROM doomed_keys)",
                [alternate],
            )

    def _completion_row(self, pipeline: str) -> Row | None:
        with self._connect() as con:
            values = con.execute(f"{_COMPLETION_SELECT} WHERE pipeline_name = ?", [pipeline]).fetchone()
        return dict(zip(TABLE_COMPLETION_COLUMNS, values, strict=True)) if values else None

    def _write_completion(self, row: Row) -> None:
        with self._connect() as con:
            con.execute(
                f"INSERT OR REPLACE INTO table_completion ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                list(row.values()),
            )

    def _delete_completions(self, pipelines: Sequence[str] | None) -> None:
        with self._connect() as con:
            if pipelines is None:
                con.execute("DELETE FROM table_completion")
            else:
                con.executemany("DELETE FROM table_completion WHERE pipeline_name = ?", [[p] for p in pipelines])

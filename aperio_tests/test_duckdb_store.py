"""The local-mode store's legacy duties: upgrade old files, canonicalise keys, share the file
between processes, never damage or drop a file; and storage errors always raise."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import duckdb
import pytest

from aperio_assets.config import S3Settings
from aperio_assets.errors import StorageError, StorageUnavailable
from aperio_assets.state import DuckDBPartitionStatusStore, ParquetPartitionStatusStore
from aperio_assets.state.legacy_schema import PARTITION_STATUS_COLUMNS, PARTITION_STATUS_DDL_OLD
from aperio_assets.storage import RetryPolicy, S3Storage
from aperio_tests.helpers import run_in_processes


def test_old_file_is_upgraded_and_legacy_keys_canonicalised(tmp_path: Path) -> None:
    path = tmp_path / ".partition_status.duckdb"
    con = duckdb.connect(str(path))
    con.execute(PARTITION_STATUS_DDL_OLD)
    con.executemany(
        "INSERT INTO partition_status VALUES (?, ?, ?, ?, ?)",
        [
            ("flights", '{"year": "2013", "month": "02"}', "flights", None, 2000),  # newer, unsorted
            ("flights", '{"month":"02","year":"2013"}', "flights", None, 1000),  # older, canonical
            ("flights", '{"year":"2013","month":"05"}', "flights", None, 1500),  # unsorted only
            ("flights", "{}", "flights", None, 1200),
        ],
    )
    con.close()
    store = DuckDBPartitionStatusStore(path)
    assert store.get_processed_key_values("flights") == [
        {"month": "02", "year": "2013"},
        {"month": "05", "year": "2013"},
        {},
    ]
    rows = {r["incremental_key_values"]: r["processed_at"] for r in store.status_rows("flights")}
    assert rows == {"{}": 1200, '{"month":"02","year":"2013"}': 2000, '{"month":"05","year":"2013"}': 1500}
    columns = [r[0] for r in duckdb.connect(str(path), read_only=True).execute("DESCRIBE partition_status").fetchall()]
    assert tuple(columns) == PARTITION_STATUS_COLUMNS
    store.mark_table_complete("p", "s")  # table_completion was created
    assert store.is_table_complete("p", "s")


def test_damaged_file_raises_and_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / ".partition_status.duckdb"
    path.write_bytes(b"this is not a duckdb database" * 100)
    before = path.read_bytes()
    store = DuckDBPartitionStatusStore(path)
    with pytest.raises(StorageError, match=r"cannot open .*partition_status.duckdb.*left as it is"):
        store.is_processed("a", "a", {})
    assert path.read_bytes() == before


def test_a_file_being_created_by_another_process_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB creates its file, then writes its headers: another process opening it in between is
    told it "is not a valid DuckDB database file" (the throughput bench's two legacy writers hit
    this). An empty file is tried again until it is a database; one that stays empty is refused
    after ``CREATION_SECONDS``; a damaged file is refused at once (above)."""
    from aperio_assets.state import duckdb_tracker

    path = tmp_path / ".partition_status.duckdb"
    path.write_bytes(b"")  # created, its headers not written yet
    made = tmp_path / "made.duckdb"
    duckdb.connect(str(made)).close()
    creator = threading.Timer(0.3, os.replace, (made, path))  # the other process finishes creating it
    creator.start()
    try:
        DuckDBPartitionStatusStore(path).mark_processed("t", "t", {"d": "1"}, row_count=3)
    finally:
        creator.join()
    assert DuckDBPartitionStatusStore(path).get_processed_key_values("t") == [{"d": "1"}]

    stuck = tmp_path / "stuck.duckdb"
    stuck.write_bytes(b"")
    monkeypatch.setattr(duckdb_tracker, "CREATION_SECONDS", 0.2)
    with pytest.raises(StorageError, match="not a valid DuckDB database file"):
        DuckDBPartitionStatusStore(stuck).mark_processed("t", "t", {"d": "1"})
    assert stuck.read_bytes() == b""


def _mark_in_process(path: str, me: int, count: int) -> None:
    store = DuckDBPartitionStatusStore(path)
    for i in range(count):
        store.mark_processed(f"w{me}", "t", {"i": str(i)})


@pytest.mark.slow
def test_processes_share_one_duckdb_file(tmp_path: Path) -> None:
    path = str(tmp_path / ".partition_status.duckdb")
    run_in_processes(_mark_in_process, [(path, n, 25) for n in range(3)])
    store = DuckDBPartitionStatusStore(path)
    assert [len(store.get_processed_key_values(f"w{n}")) for n in range(3)] == [25, 25, 25]


def test_storage_errors_raise_never_false(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    storage = S3Storage(
        S3Settings(endpoint_url=f"http://127.0.0.1:{port}"),
        aperio_root="s3://gone/.aperio",
        retry=RetryPolicy(attempts=2, sleep=lambda s: None),
    )
    tracker = ParquetPartitionStatusStore(storage, "sales")
    with pytest.raises(StorageUnavailable):
        tracker.is_processed("a", "a", {})
    with pytest.raises(StorageUnavailable):
        tracker.filter_unprocessed("a", "a", [{}])
    with pytest.raises(StorageUnavailable):
        tracker.mark_processed("a", "a", {})

"""``aperio bench`` (DESIGN §11): local mode against shared mode, side by side in one run, on local disk
and on a loopback S3 server, at 1k / 10k / 100k batch keys.

Local mode is the legacy single-node state: the ``.partition_status.duckdb`` store (one connection
per operation, as the legacy store requires) and the persistent ``shared.duckdb`` catalog, always on
this machine's disk (that is what local mode is, even for an S3 lake). Shared mode is the state
tables on the storage under test. Each operation is timed over interleaved repetitions (local,
shared, shared, local, …); the medians are reported, with the storage requests shared mode made
for one run of the operation.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from aperio_assets.bench.s3server import LoopbackS3, loopback_s3
from aperio_assets.catalog.connect import open_catalog
from aperio_assets.catalog.s3access import enable_s3
from aperio_assets.catalog.views import table_scan_sql, views_table
from aperio_assets.config import CompactionSettings
from aperio_assets.lake import Lake, open_lake
from aperio_assets.sqlutil import quote_identifier
from aperio_assets.state import DuckDBPartitionStatusStore, IncrementalTracker, ParquetPartitionStatusStore
from aperio_assets.storage import LocalStorage, S3Storage, StorageProvider

ALTERNATE = "flights"
TRACKER_OPERATIONS = ("cold_open_lookup", "warm_lookup", "single_mark", "batch_1000", "filter_unprocessed_10k")
OPERATIONS = (*TRACKER_OPERATIONS, "compact_1000_files", "connect_10_views", "connect_100_views")
STORAGES = ("local", "s3")
FULL_KEYS = (1_000, 10_000, 100_000)
QUICK_KEYS = (10_000,)
# A writer that must not compact while the bench lays down its 1,000 small files.
NO_COMPACTION = CompactionSettings(max_small_files=1_000_000)
Progress = Callable[[str], None]


@dataclass
class BenchRow:
    operation: str
    storage: str
    keys: int
    local_ms: float
    shared_ms: float
    ratio: float
    s3_requests: dict[str, int] = field(default_factory=dict)  # per run of the operation, shared mode
    detail: dict[str, float] = field(default_factory=dict)  # extra figures of some rows

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        if not row["detail"]:
            del row["detail"]
        return row


def batch_key(i: int) -> dict[str, str]:
    return {"year": str(2000 + i // 1000), "n": str(i % 1000)}


def records(start: int, count: int) -> list[dict[str, Any]]:
    return [
        {
            "alternate": ALTERNATE,
            "source_table": ALTERNATE,
            "key_values": batch_key(i),
            "row_count": i,
            "target_pattern": f"tables/{ALTERNATE}/*.parquet",
        }
        for i in range(start, start + count)
    ]


class Timings:
    """Samples per (operation, side), and the requests one shared run of each operation made."""

    def __init__(self, storage: StorageProvider) -> None:
        self.storage = storage
        self.samples: dict[tuple[str, str], list[float]] = {}
        self.requests: dict[str, dict[str, int]] = {}

    def time(self, operation: str, side: str, fn: Callable[[], object]) -> None:
        counting = side == "shared" and operation not in self.requests
        if counting:
            self.storage.counters.reset()
        started = time.perf_counter()
        fn()
        self.samples.setdefault((operation, side), []).append((time.perf_counter() - started) * 1000)
        if counting:
            self.requests[operation] = {k: v for k, v in self.storage.counters.snapshot().items() if v}

    def rows(self, storage: str, keys: int, operations: tuple[str, ...]) -> list[BenchRow]:
        rows = []
        for op in operations:
            local = statistics.median(self.samples[(op, "local")])
            shared = statistics.median(self.samples[(op, "shared")])
            rows.append(
                BenchRow(
                    op,
                    storage,
                    keys,
                    round(local, 3),
                    round(shared, 3),
                    round(shared / local, 3),
                    self.requests.get(op, {}) if storage == "s3" else {},
                )
            )
        return rows


class Place:
    """Where the shared state lives for one storage under test (a fresh directory per scenario)."""

    def __init__(self, storage: str, root: Path, s3: LoopbackS3 | None) -> None:
        self.storage, self.root, self.s3 = storage, root, s3
        self._n = 0

    def fresh(self, what: str) -> str:
        self._n += 1
        if self.s3 is None:
            return str(self.root / f"{what}-{self._n}")
        return f"s3://{self.s3.bucket}/{what}-{self._n}"

    def provider(self, aperio_root: str) -> StorageProvider:
        if self.s3 is None:
            return LocalStorage(aperio_root=aperio_root)
        return S3Storage(self.s3.settings, aperio_root=aperio_root)

    def config(self, base: str, extra: str = "") -> str:
        endpoint = f"storage:\n  s3:\n    endpoint_url: {self.s3.endpoint_url}\n" if self.s3 else ""
        path = self.root / f"aperio-{self._n}.yaml"
        path.write_text(f"baseDirectory: {base}\n{endpoint}{extra}")
        return str(path)


# -- the tracker operations ------------------------------------------------------------------------
def _seed(tracker: IncrementalTracker, keys: int) -> None:
    for start in range(0, keys, 50_000):
        tracker.mark_many(records(start, min(50_000, keys - start)))
    if isinstance(tracker, ParquetPartitionStatusStore):
        tracker.compact()  # the steady state the schedule keeps: one compacted file


def tracker_rows(place: Place, keys: int, repetitions: int) -> list[BenchRow]:
    aperio_root = place.fresh("trackers")
    shared_storage = place.provider(aperio_root)
    local_path = place.root / f"local-{keys}" / ".partition_status.duckdb"
    opens: dict[str, Callable[[], IncrementalTracker]] = {
        "local": lambda: DuckDBPartitionStatusStore(local_path),
        "shared": lambda: ParquetPartitionStatusStore(shared_storage, "bench", CompactionSettings()),
    }
    warm = {side: opens[side]() for side in opens}
    for tracker in warm.values():
        _seed(tracker, keys)
        tracker.is_processed(ALTERNATE, ALTERNATE, batch_key(0))
    next_key = dict.fromkeys(opens, keys)
    combos = [batch_key(i) for i in range(0, 2 * keys, max(1, 2 * keys // 10_000))][:10_000]
    timings = Timings(shared_storage)
    for rep in range(repetitions):
        for side in ("local", "shared") if rep % 2 == 0 else ("shared", "local"):
            tracker, probe, n = warm[side], batch_key((rep * 7919) % keys), next_key[side]
            timings.time(
                "cold_open_lookup", side, lambda s=side, p=probe: opens[s]().is_processed(ALTERNATE, ALTERNATE, p)
            )
            timings.time("warm_lookup", side, lambda t=tracker, p=probe: t.is_processed(ALTERNATE, ALTERNATE, p))
            timings.time("single_mark", side, lambda t=tracker, n=n: t.mark_many(records(n, 1)))
            timings.time("batch_1000", side, lambda t=tracker, n=n: t.mark_many(records(n + 1, 1000)))
            next_key[side] = n + 1001
            timings.time(
                "filter_unprocessed_10k", side, lambda t=tracker: t.filter_unprocessed(ALTERNATE, ALTERNATE, combos)
            )
    return timings.rows(place.storage, keys, TRACKER_OPERATIONS)


def compaction_rows(place: Place, keys: int, repetitions: int) -> list[BenchRow]:
    """1,000 single-batch marks brought to consolidated state. Shared: 1,000 marks (1,000 small
    files), then a fresh compactor (the schedule's) merges them into the table's compacted file.
    Local: the legacy store has no files to merge; it consolidates every mark into its database as
    it commits (its per-operation connection checkpoints on close), so its side is the 1,000 marks.
    The compaction step alone is reported in the row's ``detail``."""
    timings: Timings | None = None
    compaction_ms: list[float] = []
    for rep in range(repetitions):
        storage = place.provider(place.fresh("compaction"))
        timings = timings or Timings(storage)
        timings.storage = storage
        writer = ParquetPartitionStatusStore(storage, "bench", NO_COMPACTION)
        _seed(writer, keys)
        local = DuckDBPartitionStatusStore(place.root / f"compaction-{keys}-{rep}" / ".partition_status.duckdb")
        _seed(local, keys)

        def legacy(store: DuckDBPartitionStatusStore = local) -> None:
            for i in range(1000):
                store.mark_many(records(keys + i, 1))

        def shared(w: ParquetPartitionStatusStore = writer, s: StorageProvider = storage) -> None:
            for i in range(1000):
                w.mark_many(records(keys + i, 1))
            started = time.perf_counter()
            (status, _) = ParquetPartitionStatusStore(s, "bench", CompactionSettings(grace_period_seconds=0)).compact()
            compaction_ms.append((time.perf_counter() - started) * 1000)
            assert status.files_read == 1001 and status.files_deleted == 1001, status

        for side, fn in (("local", legacy), ("shared", shared))[:: 1 if rep % 2 == 0 else -1]:
            timings.time("compact_1000_files", side, fn)
    assert timings is not None
    (row,) = timings.rows(place.storage, keys, ("compact_1000_files",))
    row.detail = {"compaction_only_ms": round(statistics.median(compaction_ms), 3)}
    return [row]


# -- catalog connect -------------------------------------------------------------------------------
def _catalog_lake(place: Place, views: int, keys: int) -> tuple[Lake, Path]:
    """A lake with ``views`` one-file tables and their generated views, and the same views in a
    legacy persistent catalog (``shared.duckdb``) on this machine."""
    base = place.fresh(f"catalog-{views}")
    lake = open_lake(place.config(base, "schemas: [bench]\n"))
    buffer = io.BytesIO()
    pl.DataFrame({"id": [1, 2, 3], "name": ["a", "b", "c"]}).write_parquet(buffer)
    rows, statements = [], ['CREATE SCHEMA IF NOT EXISTS "bench"']
    for i in range(views):
        path = lake.storage.aperio_path("bench", f"tables/t{i}/data.parquet")
        lake.storage.write_bytes(path, buffer.getvalue())
        sql = table_scan_sql([lake.storage.join(os.path.dirname(path), "*.parquet")])
        rows.append({"schema_name": "bench", "view_name": f"t{i}", "origin": "generated", "sql": sql})
        statements.append(f'CREATE VIEW "bench".{quote_identifier(f"t{i}")} AS {sql}')
    views_table(lake).write(upserts=rows)
    status = ParquetPartitionStatusStore(lake.storage, "bench", CompactionSettings())
    _seed(status, keys)  # the catalog also exposes the state (aperio.partition_status)
    legacy = place.root / f"legacy-catalog-{views}-{keys}" / "shared.duckdb"
    legacy.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(legacy)) as con:
        if isinstance(lake.storage, S3Storage):  # CREATE VIEW binds its files
            enable_s3(con, lake.storage)
        for statement in statements:
            con.execute(statement)
    return lake, legacy


def connect_rows(place: Place, repetitions: int, keys: int) -> list[BenchRow]:
    """Connect, then list the views (so the catalog is really loaded): the legacy persistent catalog
    opened read-only against ``catalog.connect`` (its machine-local cache prepared by one untimed
    first connect, as after any change of the definitions)."""
    rows = []
    for views in (10, 100):
        lake, legacy = _catalog_lake(place, views, keys)
        open_catalog(lake)[0].close()
        timings = Timings(lake.storage)
        operation = f"connect_{views}_views"

        def local(path: Path = legacy, n: int = views) -> None:
            with duckdb.connect(str(path), read_only=True) as con:
                assert con.execute("SELECT count(*) FROM duckdb_views() WHERE NOT internal").fetchone()[0] == n

        def shared(lk: Lake = lake, n: int = views) -> None:
            con, report = open_catalog(lk)
            try:
                assert report.views == n and not report.broken, report.broken
                con.execute("SELECT count(*) FROM duckdb_views() WHERE NOT internal").fetchone()
            finally:
                con.close()

        for rep in range(repetitions):
            for side, fn in (("local", local), ("shared", shared))[:: 1 if rep % 2 == 0 else -1]:
                timings.time(operation, side, fn)
        rows += timings.rows(place.storage, keys, (operation,))
    return rows


@contextlib.contextmanager
def _place(storage: str, root: Path) -> Iterator[Place]:
    if storage == "local":
        yield Place(storage, root, None)
        return
    with loopback_s3() as s3:
        yield Place(storage, root, s3)


def run_bench(
    *,
    quick: bool = False,
    storages: tuple[str, ...] = STORAGES,
    keys: tuple[int, ...] | None = None,
    repetitions: int | None = None,
    progress: Progress | None = None,
) -> list[BenchRow]:
    """Every operation on every storage at every key count; returns the rows in that order."""
    keys = keys or (QUICK_KEYS if quick else FULL_KEYS)
    repetitions = repetitions or (5 if quick else 11)
    # compact_1000_files makes 2,000 marks per repetition (the legacy side alone takes ~25 s)
    heavy_repetitions = 1
    note = progress or (lambda message: None)
    rows: list[BenchRow] = []
    previous_cache = os.environ.get("APERIO_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="aperio-bench-") as tmp:
        os.environ["APERIO_CACHE_DIR"] = str(Path(tmp) / "catalog-cache")
        try:
            for storage in storages:
                with _place(storage, Path(tmp) / storage) as place:
                    place.root.mkdir(parents=True, exist_ok=True)
                    for n in keys:
                        note(f"{storage}: trackers at {n:,} keys")
                        rows += tracker_rows(place, n, repetitions)
                        note(f"{storage}: compaction of 1,000 files at {n:,} keys")
                        rows += compaction_rows(place, n, heavy_repetitions)
                        note(f"{storage}: catalog connect")
                        rows += connect_rows(place, repetitions, n)
        finally:
            if previous_cache is None:
                os.environ.pop("APERIO_CACHE_DIR", None)
            else:
                os.environ["APERIO_CACHE_DIR"] = previous_cache
    return rows

"""``aperio bench`` (DESIGN §11): local mode against shared mode, side by side in one run, on local disk
and on a loopback S3 server, at 1k / 10k / 100k batch keys.

Local mode is the legacy single-node state: the ``.partition_status.duckdb`` store (one connection
per operation, as the legacy store requires) and the persistent ``shared.duckdb`` catalog, always on
this machine's disk (that is what local mode is, even for an S3 lake). Shared mode is the state
tables on the storage under test. Each operation is timed over interleaved repetitions (local,
shared, shared, local, …); the medians are reported, with the storage requests shared mode made
for one run of the operation and, on S3, the fewest requests the protocol needs for it (DESIGN §5):
requests above that minimum are shown, never hidden.

S3 is measured at each latency asked for (``s3_latencies``): 0 is the loopback server itself; a
latency above 0 puts :func:`~aperio_assets.bench.scaleout.latency_proxy` in front of it (its own
process), delaying every request by that many ms as real S3's 10-30 ms would, and counting what
reaches it (the DuckDB catalog's own requests included).

``fresh_process_lookup`` is a new Python process's first lookup, imports included: shared mode through
``open_tracker`` (what a pipeline process does), local mode the legacy file's fastest honest read (a
process importing only DuckDB, one read-only connection, one SELECT). Sizes: ``full`` (1k/10k/100k
keys, 11 repetitions), ``quick`` (10k keys, 5) and ``smoke`` (1k keys, 1 repetition, 5 files to
compact: every row and mode in seconds, for the test suite; its timings mean nothing).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from aperio_assets import layout
from aperio_assets.bench.s3server import LoopbackS3, loopback_s3
from aperio_assets.bench.scaleout import latency_proxy
from aperio_assets.catalog.connect import open_catalog
from aperio_assets.catalog.s3access import enable_s3
from aperio_assets.catalog.views import table_scan_sql, views_table
from aperio_assets.config import CompactionSettings
from aperio_assets.lake import Lake, open_lake
from aperio_assets.sqlutil import quote_identifier
from aperio_assets.state import DuckDBPartitionStatusStore, IncrementalTracker, ParquetPartitionStatusStore
from aperio_assets.state.keys import canonical_key
from aperio_assets.storage import LocalStorage, S3Storage, StorageProvider

ALTERNATE = "flights"
TRACKER_OPERATIONS = (
    "cold_open_lookup",
    "fresh_process_lookup",
    "warm_lookup",
    "single_mark",
    "batch_1000",
    "filter_unprocessed_10k",
)
OPERATIONS = (*TRACKER_OPERATIONS, "compact_1000_files", "connect_10_views", "connect_100_views")
STORAGES = ("local", "s3")
FULL_KEYS = (1_000, 10_000, 100_000)
QUICK_KEYS = (10_000,)
SMOKE_KEYS = (1_000,)
COMPACT_FILES = 1_000  # the small files compact_1000_files makes and merges (smoke: SMOKE_COMPACT_FILES)
SMOKE_COMPACT_FILES = 5
# partition_status, table_completion, conversions: the catalog exposes every one
STATE_DIRECTORIES_PER_SCHEMA = len(layout.SCHEMA_STATE_TABLES)
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
    s3_latency_ms: float | None = None  # S3 rows: the delay added to every request (0: none)
    min_requests: dict[str, int] = field(default_factory=dict)  # S3 rows: the protocol's minimum
    min_met: bool | None = None  # S3 rows: no kind of request above its minimum
    requests_over_min: int | None = None  # S3 rows: requests made beyond the minimum, all kinds
    proxy_requests: int | None = None  # S3 rows behind the latency proxy: every request it saw

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        if not row["detail"]:
            del row["detail"]
        return row


def minimum_requests(operation: str, compact_files: int = COMPACT_FILES, schemas: int = 1) -> dict[str, int]:
    """The fewest S3 requests one run of ``operation`` can make under the state-table protocol
    (DESIGN §5): a read LISTs the table's directory (one page) and GETs the files it has not read
    (a cold reader: the one compacted file); a write is one PUT; compaction GETs every file, PUTs the
    merged one and deletes the merged ones (DeleteObjects takes 1,000 keys a request); a warm catalog
    connect LISTs each state directory it exposes once, whatever the number of views."""
    if operation in ("cold_open_lookup", "fresh_process_lookup"):
        return {"LIST": 1, "GET": 1}
    if operation in ("warm_lookup", "filter_unprocessed_10k"):
        return {"LIST": 1}
    if operation in ("single_mark", "batch_1000"):
        return {"PUT": 1}
    if operation == "compact_1000_files":  # the marks, then the compaction of marks + the seeded file
        merged = compact_files + 1
        return {"PUT": compact_files + 1, "GET": merged, "LIST": 1, "DELETE": math.ceil(merged / 1000)}
    if operation.startswith("connect_"):
        return {"LIST": 1 + STATE_DIRECTORIES_PER_SCHEMA * schemas}
    raise ValueError(f"no minimum known for {operation!r}")


def judge_requests(row: BenchRow, compact_files: int) -> None:
    """Set an S3 row's minimum, whether it is met and the requests above it."""
    row.min_requests = minimum_requests(row.operation, compact_files)
    over = {k: n - row.min_requests.get(k, 0) for k, n in row.s3_requests.items()}
    row.requests_over_min = sum(max(0, n) for n in over.values())
    row.min_met = row.requests_over_min == 0


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
    """Samples per (operation, side), and the requests one shared run of each operation made (counted
    by the storage provider, or reported by the child process that made them; and, behind the
    latency proxy, everything the proxy saw)."""

    def __init__(self, storage: StorageProvider, proxy: Any = None) -> None:
        self.storage = storage
        self.proxy = proxy
        self.samples: dict[tuple[str, str], list[float]] = {}
        self.requests: dict[str, dict[str, int]] = {}
        self.proxy_requests: dict[str, int] = {}

    def time(self, operation: str, side: str, fn: Callable[[], object], *, child_counts: bool = False) -> None:
        """Time ``fn``. ``child_counts``: ``fn`` returns the requests its child process made."""
        counting = side == "shared" and operation not in self.requests
        if counting:
            self.storage.counters.reset()
            seen_before = self.proxy.requests() if self.proxy is not None else 0  # (outside the timing)
        started = time.perf_counter()
        result = fn()
        self.samples.setdefault((operation, side), []).append((time.perf_counter() - started) * 1000)
        if counting:
            counts = result if child_counts and isinstance(result, dict) else self.storage.counters.snapshot()
            self.requests[operation] = {k: v for k, v in counts.items() if v}
            if self.proxy is not None:
                self.proxy_requests[operation] = self.proxy.requests() - seen_before

    def rows(self, place: Place, keys: int, operations: tuple[str, ...]) -> list[BenchRow]:
        rows = []
        for op in operations:
            local = statistics.median(self.samples[(op, "local")])
            shared = statistics.median(self.samples[(op, "shared")])
            row = BenchRow(
                op,
                place.storage,
                keys,
                round(local, 3),
                round(shared, 3),
                round(shared / local, 3),
                self.requests.get(op, {}) if place.storage == "s3" else {},
            )
            if place.storage == "s3":
                row.s3_latency_ms = place.latency_ms
                row.proxy_requests = self.proxy_requests.get(op)
                judge_requests(row, place.compact_files)
            rows.append(row)
        return rows


class Place:
    """Where the shared state lives for one storage under test (a fresh directory per scenario).
    ``s3`` is the endpoint the code under test talks to (the latency proxy when there is one)."""

    def __init__(
        self,
        storage: str,
        root: Path,
        s3: LoopbackS3 | None,
        *,
        latency_ms: float | None = None,
        proxy: Any = None,
        compact_files: int = COMPACT_FILES,
        smoke: bool = False,
    ) -> None:
        self.storage, self.root, self.s3 = storage, root, s3
        self.latency_ms, self.proxy, self.compact_files, self.smoke = latency_ms, proxy, compact_files, smoke
        self._n = 0
        self._prefix = uuid.uuid4().hex[:8]  # places at several latencies share one bucket: no name in common

    def fresh(self, what: str) -> str:
        self._n += 1
        if self.s3 is None:
            return str(self.root / f"{what}-{self._n}")
        return f"s3://{self.s3.bucket}/{self._prefix}/{what}-{self._n}"

    def provider(self, aperio_root: str) -> StorageProvider:
        if self.s3 is None:
            return LocalStorage(aperio_root=aperio_root)
        return S3Storage(self.s3.settings, aperio_root=aperio_root)

    def config(self, base: str, extra: str = "") -> str:
        endpoint = f"storage:\n  s3:\n    endpoint_url: {self.s3.endpoint_url}\n" if self.s3 else ""
        path = self.root / f"aperio-{self._n}.yaml"
        path.write_text(f"baseDirectory: {base}\n{endpoint}{extra}")
        return str(path)

    def timings(self, storage: StorageProvider) -> Timings:
        return Timings(storage, self.proxy)


# -- the tracker operations ------------------------------------------------------------------------
SEED_CHUNK = 50_000  # keys per seeding write


def _seed(tracker: IncrementalTracker, keys: int) -> None:
    for start in range(0, keys, SEED_CHUNK):
        tracker.mark_many(records(start, min(SEED_CHUNK, keys - start)))
    if isinstance(tracker, ParquetPartitionStatusStore):
        tracker.compact()  # the steady state the schedule keeps: one compacted file


# A fresh process's first lookup, imports included, both sides through the public entry point a
# pipeline process uses (``open_tracker`` on a configuration: shared mode, and local mode, whose
# tracker is the legacy DuckDB store). The legacy file read by a process importing nothing but DuckDB
# (one read-only connection, one SELECT: no aperio at all) is timed too, in the row's ``detail``.
FRESH_LOOKUP = """
import json, sys
from aperio_assets.lake import open_lake
from aperio_assets.state import open_tracker
lake = open_lake(sys.argv[1])
found = open_tracker(lake, "bench").is_processed(sys.argv[2], sys.argv[2], json.loads(sys.argv[3]))
print(json.dumps({"found": found, "requests": lake.storage.counters.snapshot()}))
"""
FRESH_DUCKDB_ONLY_LOOKUP = """
import json, sys, duckdb
with duckdb.connect(sys.argv[1], read_only=True) as con:
    row = con.execute(
        "SELECT processed_at FROM partition_status WHERE alternate_name = ? AND incremental_key_values = ?",
        [sys.argv[2], sys.argv[3]],
    ).fetchone()
print(json.dumps({"found": row is not None}))
"""


def _fresh_process(code: str, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"the fresh-process lookup failed: {done.stderr.strip()[-2000:]}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    if answer.get("found") is not True:
        raise RuntimeError(f"the fresh-process lookup did not find a batch that is there: {answer}")
    return answer


def tracker_rows(place: Place, keys: int, repetitions: int) -> list[BenchRow]:
    aperio_root = place.fresh("trackers")
    shared_storage = place.provider(aperio_root)
    legacy_directory = place.root / f"local-{keys}"
    local_path = legacy_directory / "bench" / ".partition_status.duckdb"  # where local mode keeps it
    # (the lakes themselves are never read: a base beside the state, on the same storage)
    shared_config = place.config(f"{aperio_root}-lake", f"aperioDirectory: {aperio_root}\nschemas: [bench]\n")
    legacy_config = legacy_directory / "aperio.yaml"
    legacy_config.parent.mkdir(parents=True, exist_ok=True)
    legacy_config.write_text(
        f"baseDirectory: {legacy_directory / 'lake'}\nstateStorage: local\nlegacyDirectory: {legacy_directory}\n"
        "schemas: [bench]\n"
    )
    duckdb_only_ms: list[float] = []
    opens: dict[str, Callable[[], IncrementalTracker]] = {
        "local": lambda: DuckDBPartitionStatusStore(local_path),
        "shared": lambda: ParquetPartitionStatusStore(shared_storage, "bench", CompactionSettings()),
    }

    def fresh_lookup(side: str, probe: dict[str, str]) -> dict[str, int]:
        config = shared_config if side == "shared" else str(legacy_config)
        return _fresh_process(FRESH_LOOKUP, config, ALTERNATE, json.dumps(probe))["requests"]

    def duckdb_only_lookup(probe: dict[str, str]) -> None:
        started = time.perf_counter()
        _fresh_process(FRESH_DUCKDB_ONLY_LOOKUP, str(local_path), ALTERNATE, canonical_key(probe))
        duckdb_only_ms.append((time.perf_counter() - started) * 1000)

    warm = {side: opens[side]() for side in opens}
    for tracker in warm.values():
        _seed(tracker, keys)
        tracker.is_processed(ALTERNATE, ALTERNATE, batch_key(0))
    next_key = dict.fromkeys(opens, keys)
    combos = [batch_key(i) for i in range(0, 2 * keys, max(1, 2 * keys // 10_000))][:10_000]
    timings = place.timings(shared_storage)
    for rep in range(repetitions):
        for side in ("local", "shared") if rep % 2 == 0 else ("shared", "local"):
            tracker, probe, n = warm[side], batch_key((rep * 7919) % keys), next_key[side]
            timings.time(
                "cold_open_lookup", side, lambda s=side, p=probe: opens[s]().is_processed(ALTERNATE, ALTERNATE, p)
            )
            timings.time("fresh_process_lookup", side, lambda s=side, p=probe: fresh_lookup(s, p), child_counts=True)
            if side == "local" and not place.smoke:  # (a detail the smoke size leaves out)
                duckdb_only_lookup(probe)
            timings.time("warm_lookup", side, lambda t=tracker, p=probe: t.is_processed(ALTERNATE, ALTERNATE, p))
            timings.time("single_mark", side, lambda t=tracker, n=n: t.mark_many(records(n, 1)))
            timings.time("batch_1000", side, lambda t=tracker, n=n: t.mark_many(records(n + 1, 1000)))
            next_key[side] = n + 1001
            timings.time(
                "filter_unprocessed_10k", side, lambda t=tracker: t.filter_unprocessed(ALTERNATE, ALTERNATE, combos)
            )
    rows = timings.rows(place, keys, TRACKER_OPERATIONS)
    for row in rows:
        if row.operation == "fresh_process_lookup" and duckdb_only_ms:
            duckdb_only = statistics.median(duckdb_only_ms)
            row.detail = {
                "duckdb_only_ms": round(duckdb_only, 3),
                "ratio_to_duckdb_only": round(row.shared_ms / duckdb_only, 3),
            }
    return rows


def compaction_rows(place: Place, keys: int, repetitions: int) -> list[BenchRow]:
    """1,000 single-batch marks brought to consolidated state (``place.compact_files`` of them: 1,000
    but in the smoke size). Shared: the marks (as many small files), then a fresh compactor (the
    schedule's) merges them into the table's compacted file. Local: the legacy store has no files to
    merge; it consolidates every mark into its database as it commits (its per-operation connection
    checkpoints on close), so its side is the marks. The compaction step alone is reported in the
    row's ``detail``, with the number of marks."""
    marks = place.compact_files
    timings: Timings | None = None
    compaction_ms: list[float] = []
    for rep in range(repetitions):
        storage = place.provider(place.fresh("compaction"))
        timings = timings or place.timings(storage)
        timings.storage = storage
        writer = ParquetPartitionStatusStore(storage, "bench", NO_COMPACTION)
        _seed(writer, keys)
        local = DuckDBPartitionStatusStore(place.root / f"compaction-{keys}-{rep}" / ".partition_status.duckdb")
        _seed(local, keys)

        def legacy(store: DuckDBPartitionStatusStore = local) -> None:
            for i in range(marks):
                store.mark_many(records(keys + i, 1))

        def shared(w: ParquetPartitionStatusStore = writer, s: StorageProvider = storage) -> None:
            for i in range(marks):
                w.mark_many(records(keys + i, 1))
            started = time.perf_counter()
            (status, _) = ParquetPartitionStatusStore(s, "bench", CompactionSettings(grace_period_seconds=0)).compact()
            compaction_ms.append((time.perf_counter() - started) * 1000)
            # the marks and the seed's compacted file; past 50,000 keys the seed wrote several files,
            # which its own compaction superseded (kept for the default grace period): deleted now too
            seed_files = -(-keys // SEED_CHUNK)
            superseded = seed_files if seed_files > 1 else 0
            assert status.files_read == marks + 1 and status.files_deleted == marks + 1 + superseded, status

        for side, fn in (("local", legacy), ("shared", shared))[:: 1 if rep % 2 == 0 else -1]:
            timings.time("compact_1000_files", side, fn)
    assert timings is not None
    (row,) = timings.rows(place, keys, ("compact_1000_files",))
    row.detail = {"compaction_only_ms": round(statistics.median(compaction_ms), 3), "marks": marks}
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
        timings = place.timings(lake.storage)
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
        rows += timings.rows(place, keys, (operation,))
    return rows


def _places(storage: str, root: Path, latencies: tuple[float, ...], compact_files: int, smoke: bool) -> Iterator[Place]:
    """The places of one storage, one after the other: local disk once; S3 once per latency, behind
    the latency proxy when it is above 0 (the seeding of each scenario goes through it too)."""
    if storage == "local":
        root.mkdir(parents=True, exist_ok=True)
        yield Place(storage, root, None, compact_files=compact_files, smoke=smoke)
        return
    with loopback_s3() as s3:
        for latency in latencies:
            where = root / f"latency-{latency:g}"
            where.mkdir(parents=True, exist_ok=True)
            if latency <= 0:
                yield Place(storage, where, s3, latency_ms=0.0, compact_files=compact_files, smoke=smoke)
                continue
            with latency_proxy(s3.endpoint_url, latency) as proxy:
                yield Place(
                    storage,
                    where,
                    LoopbackS3(proxy.url, s3.bucket),
                    latency_ms=latency,
                    proxy=proxy,
                    compact_files=compact_files,
                    smoke=smoke,
                )


def _measure_place(place: Place, keys: tuple[int, ...], repetitions: int, heavy: int, note: Progress) -> list[BenchRow]:
    where = place.storage if place.latency_ms is None else f"{place.storage} ({place.latency_ms:g} ms)"
    rows: list[BenchRow] = []
    for n in keys:
        note(f"{where}: trackers at {n:,} keys")
        rows += tracker_rows(place, n, repetitions)
        note(f"{where}: compaction of {place.compact_files:,} files at {n:,} keys")
        rows += compaction_rows(place, n, heavy)
        note(f"{where}: catalog connect")
        rows += connect_rows(place, repetitions, n)
    return rows


def run_bench(
    *,
    quick: bool = False,
    smoke: bool = False,
    storages: tuple[str, ...] = STORAGES,
    keys: tuple[int, ...] | None = None,
    repetitions: int | None = None,
    s3_latencies: tuple[float, ...] = (0.0,),
    progress: Progress | None = None,
) -> list[BenchRow]:
    """Every operation on every storage (S3: at every latency) at every key count; returns the rows
    in that order. ``smoke`` (every row and mode in seconds, for the test suite) wins over ``quick``."""
    size = "smoke" if smoke else "quick" if quick else "full"
    keys = keys or {"full": FULL_KEYS, "quick": QUICK_KEYS, "smoke": SMOKE_KEYS}[size]
    repetitions = repetitions or {"full": 11, "quick": 5, "smoke": 1}[size]
    compact_files = SMOKE_COMPACT_FILES if smoke else COMPACT_FILES
    latencies = tuple(dict.fromkeys(float(ms) for ms in s3_latencies)) or (0.0,)
    if any(ms < 0 for ms in latencies):
        raise ValueError("an S3 latency must not be negative")
    # compact_1000_files makes 2,000 marks per repetition (the legacy side alone takes ~25 s)
    heavy_repetitions = 1
    note = progress or (lambda message: None)
    rows: list[BenchRow] = []
    previous_cache = os.environ.get("APERIO_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="aperio-bench-") as tmp:
        os.environ["APERIO_CACHE_DIR"] = str(Path(tmp) / "catalog-cache")
        try:
            for storage in storages:
                with contextlib.closing(
                    _places(storage, Path(tmp) / storage, latencies, compact_files, smoke)
                ) as places:
                    for place in places:
                        rows += _measure_place(place, keys, repetitions, heavy_repetitions, note)
        finally:
            if previous_cache is None:
                os.environ.pop("APERIO_CACHE_DIR", None)
            else:
                os.environ["APERIO_CACHE_DIR"] = previous_cache
    return rows

"""A schema's conversions shared out to worker processes (``aperio refresh --workers N``).

The parent lists the schema once and decides what to convert (:meth:`SchemaRefresh.plan`); each
worker gets its share of those files, with the listing, converts them, records their lineage in its
own state files (the state protocol lets any number of writers add rows at once, none waiting for
another) and marks the batches whose every file was in its share. The parent then marks the rest,
deletes what is gone and writes the model, as a one-process refresh does: the state is the same.

Shares keep a batch's files together where they can (its mark is then written by the worker that
converted it) and are balanced by bytes, largest batch first; a batch larger than a fair share is
split by file. Workers are forked from a fork server that imported the conversion code once
(``aperio_assets.processes``), never from the parent, which may hold threads (DuckDB, the S3 event
loop) that a fork would copy mid-flight. A worker still costs a fork and its own S3 client, and the
first a process starts waits for the fork server's imports (~1 s), so it must have enough to do: on
S3, where a file is mostly waiting on requests, at least ``MIN_FILES_PER_WORKER_S3`` files; on local
disk, where a file is a few milliseconds of CPU, ``MIN_FILES_PER_WORKER_LOCAL``, and never more
workers than cores. Each worker (and a one-process refresh) also keeps several S3 conversions in
flight (``SchemaRefresh.files_in_flight``).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from aperio_assets import layout
from aperio_assets.config import AperioConfig, SchemaConfig
from aperio_assets.conversion.discovery import Discovery, RawFile, RawTable
from aperio_assets.conversion.refresh import BatchOutcome, FileOutcome, Key, LineageSink, SchemaRefresh
from aperio_assets.lake import Lake
from aperio_assets.processes import worker_context, worker_pool
from aperio_assets.state.access import open_state
from aperio_assets.state.lineage import Row

MIN_FILES_PER_WORKER_S3 = 8
MIN_FILES_PER_WORKER_LOCAL = 200
# What a conversion worker imports, once, in the fork server: this module (the conversion, the state
# protocol, storage), the S3 client (and botocore's S3 data) and Arrow datasets.
PRELOAD = ["aperio_assets.conversion.parallel", "s3fs", "aperio_assets.storage.s3_preload", "pyarrow.dataset"]
FILE_COST_BYTES = 256 * 1024  # what a file costs beyond its bytes (requests, a Parquet write), for balancing


@dataclass
class ShareResult:
    rows: dict[str, Row]  # source path → the lineage row the worker recorded
    files: list[FileOutcome]
    batches: list[BatchOutcome]
    replaced: set[str]
    marked: set[Key]


def shares(todo: Sequence[tuple[RawTable, RawFile]], workers: int, *, remote: bool = True) -> list[list[str]]:
    """``todo``'s source paths in at most ``workers`` shares (see the module's docstring); ``remote``:
    the files are on S3 (or go there)."""
    if remote:
        count = min(workers, len(todo) // MIN_FILES_PER_WORKER_S3)
    else:
        count = min(workers, os.cpu_count() or 1, len(todo) // MIN_FILES_PER_WORKER_LOCAL)
    if count <= 1:
        return [[raw.path for _, raw in todo]] if todo else []
    by_batch: dict[Key, list[RawFile]] = defaultdict(list)
    for table, raw in todo:
        by_batch[(table.name, raw.batch)].append(raw)

    def cost(files: Sequence[RawFile]) -> int:
        return sum(f.info.size + FILE_COST_BYTES for f in files)

    fair = cost([raw for _, raw in todo]) / count
    units: list[list[RawFile]] = []
    for files in by_batch.values():
        units.extend([[f] for f in files] if cost(files) > fair and len(files) > 1 else [files])
    units.sort(key=cost, reverse=True)
    loads = [0] * count
    out: list[list[str]] = [[] for _ in range(count)]
    for unit in units:  # largest first, each to the least loaded share
        least = loads.index(min(loads))
        out[least].extend(f.path for f in unit)
        loads[least] += cost(unit)
    return [share for share in out if share]


def convert_in_workers(
    run: SchemaRefresh,
    todo: Sequence[tuple[RawTable, RawFile]],
    lineage: dict[str, Row],
    sink: LineageSink,
    workers: int,
) -> tuple[set[str], set[Key]]:
    """Convert ``todo`` in worker processes; ``lineage`` and ``run.result`` are updated as if the
    parent had converted them. Returns the replaced targets and the batches the workers marked."""
    parts = shares(todo, workers, remote=run.remote)  # (not files_in_flight: it may be set to 1)
    if len(parts) <= 1:
        return run.convert(todo, lineage, sink), set()
    discovery = run.discovery
    with worker_pool(worker_context(PRELOAD), len(parts)) as pool:
        futures = [
            pool.submit(
                convert_share,
                run.lake.config,
                run.schema,
                discovery,
                part,
                {p: lineage[p] for p in part if p in lineage},
            )
            for part in parts
        ]
        results = [f.result() for f in futures]  # a worker's error is raised here, after all finished
    replaced: set[str] = set()
    marked: set[Key] = set()
    for result in results:
        lineage.update(result.rows)
        run.result.files.extend(result.files)
        run.result.batches.extend(result.batches)
        replaced |= result.replaced
        marked |= result.marked
    return replaced, marked


def convert_share(
    config: AperioConfig, schema: SchemaConfig, discovery: Discovery, share: list[str], previous: dict[str, Row]
) -> ShareResult:
    """One worker: convert the files of ``share``, record their lineage, and mark the batches
    whose every file is in it."""
    lake = Lake(replace(config, configured_schemas=(schema,)))  # (no LIST of the base to find the schema)
    run = SchemaRefresh(lake, schema)
    run.use_discovery(discovery)
    wanted = set(share)
    todo = [(table, raw) for table in discovery.tables for raw in table.files if raw.path in wanted]
    lineage = dict(previous)
    conversions = open_state(lake, schema.name, layout.CONVERSIONS)
    replaced = run.convert(todo, lineage, lambda rows, removed: conversions.apply(rows, [(p,) for p in removed]))
    whole = {
        (table.name, batch)
        for table in discovery.tables
        for batch, files in table.batches().items()
        if all(f.path in wanted for f in files)
    }
    status = open_state(lake, schema.name, layout.PARTITION_STATUS)
    marks, _ = run.process_batches(lineage, status.rows(), only=whole)
    if marks:
        status.apply(marks, [])
    return ShareResult({p: lineage[p] for p in wanted}, run.result.files, run.result.batches, replaced, whole)

"""The lake's batches as Dagster partitions: one dynamic partitions definition per schema, whose keys
are the schema's batch keys (``flights/year=2013/month=01``, ``planes``: see
:mod:`aperio_assets.conversion.batches`), registered by ``lake_change_sensor`` (or
``python -m aperio_assets.defs.launch``) as batches appear and removed as they vanish.

Why the per-schema state assets are partitioned, and not one asset per table: the asset graph
stays the same size whatever the lake holds (loading the code location lists no raw file), every
batch still has its own health in the UI (a green, red or missing partition of
``S/partition_status``), a failed batch is retried alone, and each partition step writes its own
state file, so any number of them run at once with no conflict.

A run takes a range of consecutive batches (``BATCHES_PER_RUN`` at most, the backfill policy), so a
lake of thousands of batches is refreshed in tens of runs, not thousands; runs go in parallel as the
run queue allows (``max_concurrent_runs``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from aperio_assets.conversion.discovery import ListingSlice

AssetJob = UnresolvedAssetJobDefinition  # what ``define_asset_job`` returns (not exported by name)

BATCHES_PER_RUN_ENV = "APERIO_BATCHES_PER_RUN"
DEFAULT_BATCHES_PER_RUN = 50
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def batches_per_run() -> int:
    """At most this many batches per run (``$APERIO_BATCHES_PER_RUN``, default 50)."""
    value = os.environ.get(BATCHES_PER_RUN_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_BATCHES_PER_RUN


def dagster_name(schema: str) -> str:
    """``schema`` as a Dagster name (letters, digits, ``_``), with a digest if it had to change."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", schema)
    return safe if safe == schema else f"{safe}_{hashlib.sha256(schema.encode()).hexdigest()[:8]}"


def batches_partitions(schema: str) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=f"{dagster_name(schema)}_batches")


def batches_job_name(schema: str) -> str:
    return f"{dagster_name(schema)}_batches_job"


def batch_policy() -> dg.BackfillPolicy:
    return dg.BackfillPolicy.multi_run(max_partitions_per_run=batches_per_run())


def ranges(ordered: Sequence[str], wanted: set[str], size: int) -> Iterator[tuple[str, str]]:
    """``wanted`` as ``(first, last)`` ranges of consecutive keys of ``ordered`` (the partitions in
    the order Dagster keeps them), each of at most ``size`` keys: runs never cover a batch that was
    not asked for."""
    run: list[str] = []
    for key in ordered:
        if key in wanted:
            run.append(key)
            if len(run) == size:
                yield run[0], run[-1]
                run = []
        elif run:
            yield run[0], run[-1]
            run = []
    if run:
        yield run[0], run[-1]


def range_tags(first: str, last: str) -> dict[str, str]:
    return {RANGE_START_TAG: first, RANGE_END_TAG: last}


# The slice of the schema's listing that holds a run's batches, set by the planner that listed the
# whole schema (the sensor, the launcher): the run lists that slice only. A run without it (a backfill
# or a launch from the UI) lists the whole schema.
LISTING_SLICE_TAG = "aperio/listing_slice"


def slice_tags(part: ListingSlice | None) -> dict[str, str]:
    return {LISTING_SLICE_TAG: json.dumps([part.after, part.upto, part.files])} if part is not None else {}


def slice_of(tags: Mapping[str, str]) -> ListingSlice | None:
    """The listing slice a run's tags give, or None (none given, or not one that this module wrote)."""
    try:
        after, upto, files = json.loads(tags[LISTING_SLICE_TAG])
    except (KeyError, TypeError, ValueError):
        return None
    if not (isinstance(after, str) and isinstance(upto, str) and (files is None or isinstance(files, int))):
        return None
    return ListingSlice(after, upto, files)

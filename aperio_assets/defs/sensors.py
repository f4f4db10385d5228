"""``lake_change_sensor``: registers the lake's batches as dynamic partitions and requests runs for
the batches that are new or changed, and only those (DESIGN §9).

Each tick lists each schema once (paged LISTs) and reads its conversion lineage once. The cursor
keeps a digest of each schema's listing: a schema whose listing did not change since the last tick
costs nothing more. Otherwise the sensor

- adds the keys of new batches and deletes those of batches that are gone;
- requests one run per range of consecutive batches that need one (new or changed files; a batch
  that failed is not requested again until a file of it changes, or someone retries the failed
  partition), at most ``BATCHES_PER_RUN`` batches a run, with a run key of the range and its
  files' fingerprints, so a change is requested once however many ticks see it;
- when batches are gone and nothing else runs, requests ``aperio_catalog_job`` (the model forgets
  them, the views follow). After batch runs, the model and the views are run by
  ``aperio_automation_sensor`` once every run of the wave has finished.

Every aperio sensor ticks at most once per its minimum interval (``sensor_interval``), which
``$APERIO_SENSOR_INTERVAL_SECONDS`` overrides.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg

from aperio_assets.config import SchemaConfig
from aperio_assets.conversion.batches import BatchChanges, batch_changes, listing_slice
from aperio_assets.conversion.refresh import SchemaRefresh
from aperio_assets.defs.partitions import (
    AssetJob,
    batches_job_name,
    batches_partitions,
    batches_per_run,
    range_tags,
    ranges,
    slice_tags,
)
from aperio_assets.defs.resources import AperioResource
from aperio_assets.lake import Lake

CATALOG_JOB = "aperio_catalog_job"
SENSOR_INTERVAL_ENV = "APERIO_SENSOR_INTERVAL_SECONDS"
LAKE_SENSOR_INTERVAL = 60  # lake_change_sensor and legacy_state_sensor (seconds)
AUTOMATION_SENSOR_INTERVAL = 30  # aperio_automation_sensor (Dagster's default for a sensor)


def sensor_interval(default: int) -> int:
    """The minimum seconds between two ticks of an aperio sensor: ``$APERIO_SENSOR_INTERVAL_SECONDS``
    if it is a positive integer, else the sensor's ``default``. It is the code location's setting (the
    code server reports it to the daemon), read when the sensor is defined: the lake's sensors at each
    load of the location, ``legacy_state_sensor`` when its module is imported."""
    value = os.environ.get(SENSOR_INTERVAL_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else default


@dataclass
class SchemaPlan:
    """What to register and run for one schema."""

    schema: str
    changes: BatchChanges
    runs: list[dg.RunRequest]


def plan_schema(lake: Lake, schema: SchemaConfig, registered: Sequence[str], *, retry_failed: bool) -> SchemaPlan:
    """The partitions to add and delete and the runs to request for ``schema``."""
    changes = batch_changes(SchemaRefresh(lake, schema), registered, retry_failed=retry_failed)
    runs = []
    position = {key: i for i, key in enumerate(changes.ordered)}  # (not list.index: O(batches) per range)
    listed = sorted(f.path for b in changes.batches.values() for f in b.files)  # (for each run's slice)
    for first, last in ranges(changes.ordered, set(changes.requested), batches_per_run()):
        keys = changes.ordered[position[first] : position[last] + 1]
        digest = hashlib.sha256("\n".join(f"{k}\0{changes.requested[k]}" for k in keys).encode()).hexdigest()[:16]
        run_key = f"{schema.name}:{first}...{last}:{digest}"
        # (the run lists only the slice of the listing that holds its batches' files)
        tags = slice_tags(listing_slice([changes.batches[k] for k in keys], listed))
        if first == last:
            runs.append(
                dg.RunRequest(run_key=run_key, job_name=batches_job_name(schema.name), partition_key=first, tags=tags)
            )
        else:
            runs.append(
                dg.RunRequest(
                    run_key=run_key, job_name=batches_job_name(schema.name), tags={**range_tags(first, last), **tags}
                )
            )
    return SchemaPlan(schema.name, changes, runs)


def lake_change_sensor(schemas: Sequence[SchemaConfig], jobs: Sequence[AssetJob]) -> dg.SensorDefinition:
    @dg.sensor(
        name="lake_change_sensor",
        jobs=list(jobs),
        minimum_interval_seconds=sensor_interval(LAKE_SENSOR_INTERVAL),
        description="Registers new batches as partitions (and removes vanished ones) and requests runs "
        "for the batches whose files are new or changed.",
    )
    def lake_change(context: dg.SensorEvaluationContext, aperio: AperioResource) -> dg.SensorResult:
        cursor = json.loads(context.cursor) if context.cursor else {}
        lake = aperio.lake()
        runs: list[dg.RunRequest] = []
        partition_requests: list = []
        gone: list[str] = []
        for schema in schemas:
            partitions = batches_partitions(schema.name)
            registered = context.instance.get_dynamic_partitions(partitions.name)
            plan = plan_schema(lake, schema, registered, retry_failed=False)
            if cursor.get(schema.name) == plan.changes.listing and not plan.changes.added and not plan.changes.removed:
                continue  # nothing changed since the last tick
            cursor[schema.name] = plan.changes.listing
            if plan.changes.added:
                partition_requests.append(partitions.build_add_request(plan.changes.added))
            if plan.changes.removed:
                partition_requests.append(partitions.build_delete_request(plan.changes.removed))
                gone += [f"{schema.name}:{key}" for key in plan.changes.removed]
            runs += plan.runs
            context.log.info(
                f"{schema.name}: {len(plan.changes.added)} batch(es) new, "
                f"{len(plan.changes.removed)} gone, {len(plan.changes.requested)} to run "
                f"in {len(plan.runs)} run(s)"
            )
        if gone and not runs:
            digest = hashlib.sha256("\n".join(gone).encode()).hexdigest()[:16]
            runs.append(dg.RunRequest(run_key=f"gone:{digest}", job_name=CATALOG_JOB))
        return dg.SensorResult(
            run_requests=runs,
            dynamic_partitions_requests=partition_requests,
            cursor=json.dumps(cursor, sort_keys=True),
            skip_reason=None if runs or partition_requests else "no batch changed",
        )

    return lake_change

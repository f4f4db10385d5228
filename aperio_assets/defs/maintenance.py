"""Maintenance jobs and their automation (DESIGN §9): migration of legacy state started by a sensor,
hourly compaction, and a daily materialization of ``aperio/catalog_views`` (the view definitions
rebuilt from the generated models). Each op calls the same library code as the CLI.

(No ``from __future__ import annotations`` here: Dagster reads the context annotations at runtime.)
"""

import time

import dagster as dg

from aperio_assets.defs.assets import CATALOG_VIEWS
from aperio_assets.defs.resources import AperioResource
from aperio_assets.defs.sensors import LAKE_SENSOR_INTERVAL, sensor_interval
from aperio_assets.migration import legacy_fingerprint, migrate
from aperio_assets.state.maintenance import compact_lake

FINGERPRINT_TAG = "aperio/legacy-fingerprint"


# Pools serialise these ops across all runs (dagster.yaml gives every pool a default limit of 1): two
# compactions never run at once. The protocol is safe either way; this only saves the work.
@dg.op(pool="aperio_migration")
def migrate_legacy_state(context: dg.OpExecutionContext, aperio: AperioResource) -> dg.Output[int]:
    """Migrate every shared schema's legacy state; fails (to be retried by the sensor) if any fails."""
    report = migrate(aperio.lake(), progress=context.log.info)
    migrated = [f"{s.schema}: {k.kind} ({k.rows} rows, {k.status})" for s in report.schemas for k in s.kinds]
    for schema in report.failed:
        context.log.error(f"{schema.schema}: {schema.error}")
    if report.failed:
        raise dg.Failure(
            description=f"{len(report.failed)} schema(s) could not be migrated",
            metadata={"errors": dg.MetadataValue.json({s.schema: s.error for s in report.failed})},
        )
    rows = sum(k.rows for s in report.schemas for k in s.kinds if k.status == "migrated")
    summary = "\n".join(f"- {m}" for m in migrated) or "nothing to migrate"
    return dg.Output(
        rows, metadata={"rows migrated": rows, "schemas": len(report.schemas), "summary": dg.MetadataValue.md(summary)}
    )


@dg.op(pool="aperio_compaction")
def compact_state(context: dg.OpExecutionContext, aperio: AperioResource) -> dg.Output[int]:
    results = compact_lake(aperio.lake())
    files_before = sum(r["files_read"] for r in results)
    files_after = sum(r["files_after"] for r in results)
    total = lambda key: sum(r[key] for r in results)  # noqa: E731
    return dg.Output(
        len(results),
        metadata={
            "state files before": files_before,
            "state files after": files_after,
            "superseded files deleted": total("files_deleted"),
            "superseded files kept (grace period)": total("files_kept"),
            "tombstones dropped": total("tombstones_dropped"),
        },
    )


@dg.job(description="Migrate legacy single-node state into shared state (DESIGN §8).")
def migrate_legacy_state_job() -> None:
    migrate_legacy_state()


@dg.job(description="Compact every shared state table into one file.")
def compact_state_job() -> None:
    compact_state()


# The asset's own job (its checks included): the generated view definitions follow the generated
# models even when no batch changed (`aperio views rebuild` does the same from the command line).
catalog_views_job = dg.define_asset_job(
    "catalog_views_job",
    selection=dg.AssetSelection.assets(CATALOG_VIEWS),
    description="Rebuild the generated view definitions from the generated models (user and migrated views "
    "are kept), then check them.",
)


# Running by default: the rollout plan wants legacy state migrated on start-up, and compaction keeps
# reads cheap. They need the dagster-daemon (`make dev` starts it).
compact_state_schedule = dg.ScheduleDefinition(
    name="compact_state_schedule",
    job=compact_state_job,
    cron_schedule="0 * * * *",  # hourly
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
catalog_views_schedule = dg.ScheduleDefinition(
    name="catalog_views_schedule",
    job=catalog_views_job,
    cron_schedule="30 3 * * *",  # daily
    default_status=dg.DefaultScheduleStatus.RUNNING,
)


# A failing migration is retried with backoff (1, 2, 4, 8 minutes after each failure), at most this
# many times per legacy state; then the sensor gives up, says so on every tick, and logs an error,
# until the legacy files change (a new fingerprint) or someone runs the job by hand.
MAX_MIGRATION_ATTEMPTS = 5
RETRY_BACKOFF_SECONDS = 60


def _now() -> float:
    return time.time()


@dg.sensor(
    job=migrate_legacy_state_job,
    minimum_interval_seconds=sensor_interval(LAKE_SENSOR_INTERVAL),
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def legacy_state_sensor(context: dg.SensorEvaluationContext, aperio: AperioResource) -> dg.SensorResult:
    """One run per legacy state (its files' fingerprint); a failed run is retried with a new run key,
    with backoff, at most ``MAX_MIGRATION_ATTEMPTS`` times; nothing once the legacy files are gone."""
    fingerprint = legacy_fingerprint(aperio.lake())
    if fingerprint is None:
        return dg.SensorResult(skip_reason="no legacy state left to migrate")
    records = context.instance.get_run_records(
        filters=dg.RunsFilter(job_name=migrate_legacy_state_job.name, tags={FINGERPRINT_TAG: fingerprint})
    )
    failed = [r for r in records if r.dagster_run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)]
    if len(failed) < len(records):
        return dg.SensorResult(skip_reason=f"a migration of legacy state {fingerprint} is queued, running or done")
    if len(failed) >= MAX_MIGRATION_ATTEMPTS:
        last = max(failed, key=lambda r: r.create_timestamp)
        message = (
            f"legacy state {fingerprint}: all {len(failed)} migration attempts failed (last: run "
            f"{last.dagster_run.run_id}); not retrying until the legacy files change or "
            f"{migrate_legacy_state_job.name} is run by hand"
        )
        context.log.error(message)
        return dg.SensorResult(skip_reason=message)
    if failed:
        ended = max((r.end_time or r.update_timestamp.timestamp()) for r in failed)
        wait = RETRY_BACKOFF_SECONDS * 2 ** (len(failed) - 1)
        if _now() - ended < wait:
            return dg.SensorResult(
                skip_reason=f"legacy state {fingerprint}: attempt {len(failed) + 1} of "
                f"{MAX_MIGRATION_ATTEMPTS} in {wait - (_now() - ended):.0f} s"
            )
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=f"{fingerprint}-attempt-{len(failed)}", tags={FINGERPRINT_TAG: fingerprint})
        ]
    )

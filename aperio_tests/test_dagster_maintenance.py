"""The maintenance jobs, the legacy-state sensor and the schedules, tested the Dagster way."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.sensor_definition import SensorExecutionData

from aperio_assets.catalog.views import ViewDefinition, ViewStore
from aperio_assets.conversion.refresh import refresh_schema
from aperio_assets.definitions import build_defs
from aperio_assets.defs.maintenance import (
    FINGERPRINT_TAG,
    catalog_views_job,
    catalog_views_schedule,
    compact_state_job,
    compact_state_schedule,
    legacy_state_sensor,
    migrate_legacy_state_job,
)
from aperio_assets.defs.resources import AperioResource
from aperio_assets.demo import write_demo_lake
from aperio_assets.lake import open_lake
from aperio_assets.state import open_tracker


@pytest.fixture
def legacy(tmp_path: Path) -> AperioResource:
    return AperioResource(config_path=str(write_demo_lake(tmp_path / "demo", with_legacy=True, flights_per_month=10)))


def tick(instance: dg.DagsterInstance, aperio: AperioResource) -> SensorExecutionData:
    context = dg.build_sensor_context(instance=instance, resources={"aperio": aperio})
    return legacy_state_sensor.evaluate_tick(context)


def run(
    job: dg.JobDefinition, instance: dg.DagsterInstance, aperio: AperioResource, request: dg.RunRequest | None = None
) -> dg.ExecuteInProcessResult:
    return job.execute_in_process(
        instance=instance, resources={"aperio": aperio}, tags=request.tags if request else None, raise_on_error=False
    )


def test_sensor_requests_one_migration_then_nothing(legacy: AperioResource) -> None:
    with dg.instance_for_test() as instance:
        first = tick(instance, legacy)
        (request,) = first.run_requests
        assert request.run_key.endswith("-attempt-0") and FINGERPRINT_TAG in request.tags
        result = run(migrate_legacy_state_job, instance, legacy, request)
        assert result.success
        materialized = result.output_for_node("migrate_legacy_state")
        assert materialized == 18  # flights 8 + 3 + 2 rows, reference 2 + 0 + 1, two catalog views
        after = tick(instance, legacy)
        assert not after.run_requests and "no legacy state" in after.skip_message
        lake = open_lake(legacy.config_path)
        assert len(open_tracker(lake, "flights").get_processed_key_values("flights")) == 6


def test_a_failed_migration_is_retried(legacy: AperioResource, tmp_path: Path) -> None:
    bad = tmp_path / "demo" / "lake" / ".aperio" / "reference" / ".partition_status.duckdb"
    good = bad.read_bytes()
    bad.write_bytes(b"corrupt" * 100)
    with dg.instance_for_test() as instance:
        (request,) = tick(instance, legacy).run_requests
        failed = run(migrate_legacy_state_job, instance, legacy, request)
        assert not failed.success
        # the reference schema's file is repaired (say, restored from a backup): a new attempt is requested
        bad.write_bytes(good)
        (retry,) = tick(instance, legacy).run_requests
        assert retry.run_key != request.run_key
        assert run(migrate_legacy_state_job, instance, legacy, retry).success
        assert not tick(instance, legacy).run_requests


def test_no_second_request_while_one_is_pending(legacy: AperioResource) -> None:
    with dg.instance_for_test() as instance:
        (request,) = tick(instance, legacy).run_requests
        instance.create_run_for_job(migrate_legacy_state_job, tags=request.tags)  # queued, not yet run
        assert not tick(instance, legacy).run_requests


def test_schedules_and_maintenance_jobs(legacy: AperioResource) -> None:
    with dg.instance_for_test() as instance:
        for schedule in (compact_state_schedule, catalog_views_schedule):
            context = dg.build_schedule_context(instance=instance, resources={"aperio": legacy})
            requests = schedule.evaluate_tick(context).run_requests
            assert len(requests) == 1
        assert compact_state_schedule.cron_schedule == "0 * * * *"
        assert compact_state_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
        assert catalog_views_schedule.job_name == catalog_views_job.name
        assert catalog_views_schedule.cron_schedule == "30 3 * * *"
        assert catalog_views_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
        assert run(migrate_legacy_state_job, instance, legacy).success
        tracker = open_tracker(open_lake(legacy.config_path), "flights")
        for month in ("07", "08"):
            tracker.mark_processed("flights", "flights", {"year": "2013", "month": month})
        compacted = run(compact_state_job, instance, legacy)
        assert compacted.success
        assert [s.files for s in open_tracker(open_lake(legacy.config_path), "flights").stats()] == [1, 1]


def test_the_daily_views_job_rebuilds_the_generated_views_and_keeps_the_others(legacy: AperioResource) -> None:
    """``catalog_views_job`` (on ``catalog_views_schedule``) materializes ``aperio/catalog_views``: what
    ``ViewStore.rebuild`` does (the generated view definitions follow the generated models, stale ones
    are removed, user and migrated views are kept), then the asset's checks."""
    defs = build_defs(legacy.config_path, legacy)
    with dg.instance_for_test() as instance:
        assert run(migrate_legacy_state_job, instance, legacy).success
        lake = open_lake(legacy.config_path)
        for schema in lake.schemas():
            refresh_schema(lake, schema)  # the generated models, and no view definitions yet
        store = ViewStore(lake)
        store.add("flights", "late", "SELECT 1 AS late")  # a user's view
        # a generated view no model has any more
        store.table.write(upserts=[ViewDefinition("flights", "gone", "SELECT 0", "generated").row()])
        kept = {(v.schema_name, v.view_name): v for v in store.list() if v.origin != "generated"}
        assert {v.origin for v in kept.values()} == {"user", "migrated"}
        upserts, stale, planned = ViewStore(open_lake(legacy.config_path)).plan_rebuild()
        assert upserts and stale == [("flights", "gone")]  # there is something to rebuild
        assert planned.shadowed_by_user_views == 1  # reference.airlines: the migrated view wins

        result = defs.resolve_job_def(catalog_views_job.name).execute_in_process(instance=instance)
        assert result.success
        (event,) = result.get_asset_materialization_events()
        materialization = event.materialization
        assert materialization.asset_key == dg.AssetKey(["aperio", "catalog_views"])
        assert materialization.metadata["views written"].value == len(upserts)
        assert materialization.metadata["views removed"].value == 1
        assert materialization.metadata["views shadowed by user views"].value == 1
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks == {"views_resolve": True, "state_health": True}

    after = ViewStore(open_lake(legacy.config_path))
    upserts_left, stale_left, summary = after.plan_rebuild()
    assert (upserts_left, stale_left) == ([], [])  # rebuilt: nothing more to write or remove
    views = {(v.schema_name, v.view_name): v for v in after.list()}
    assert {k: v for k, v in views.items() if v.origin != "generated"} == kept
    assert ("flights", "gone") not in views
    generated = sorted(k for k, v in views.items() if v.origin == "generated")
    assert generated == sorted((u["schema_name"], u["view_name"]) for u in upserts)
    assert summary.unchanged == len(generated)


def test_a_failing_migration_backs_off_and_gives_up(
    legacy: AperioResource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retries wait 1, 2, 4, 8 minutes after each failure; after five failures the sensor requests
    nothing more and says why on every tick, until the legacy files change."""
    from aperio_assets.defs import maintenance

    bad = tmp_path / "demo" / "lake" / ".aperio" / "reference" / ".partition_status.duckdb"
    bad.write_bytes(b"corrupt" * 100)
    clock = [0.0]
    monkeypatch.setattr(maintenance, "_now", lambda: clock[0])
    with dg.instance_for_test() as instance:
        # the first run migrates the other schema, and so changes the legacy state's fingerprint: the
        # attempts below are of the state that is left, which fails every time
        (first,) = tick(instance, legacy).run_requests
        assert not run(migrate_legacy_state_job, instance, legacy, first).success
        waits = []
        for attempt in range(maintenance.MAX_MIGRATION_ATTEMPTS):
            (request,) = tick(instance, legacy).run_requests
            assert request.run_key.endswith(f"-attempt-{attempt}")
            assert not run(migrate_legacy_state_job, instance, legacy, request).success
            (record,) = instance.get_run_records(dg.RunsFilter(run_ids=[instance.get_runs(limit=1)[0].run_id]))
            clock[0] = record.end_time or record.update_timestamp.timestamp()
            if attempt + 1 < maintenance.MAX_MIGRATION_ATTEMPTS:
                waiting = tick(instance, legacy)  # too soon: nothing requested, the wait said
                assert not waiting.run_requests and f"attempt {attempt + 2} of 5" in waiting.skip_message
                wait = maintenance.RETRY_BACKOFF_SECONDS * 2**attempt
                clock[0] += wait - 1
                assert not tick(instance, legacy).run_requests
                clock[0] += 1
                waits.append(wait)
        assert waits == [60, 120, 240, 480]
        clock[0] += 10_000
        given_up = tick(instance, legacy)
        assert not given_up.run_requests and "all 5 migration attempts failed" in given_up.skip_message
        bad.write_bytes(b"still corrupt, but changed" * 10)  # new legacy files: a new fingerprint, a new try
        (fresh,) = tick(instance, legacy).run_requests
        assert fresh.run_key.endswith("-attempt-0")

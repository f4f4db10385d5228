"""The lake's batches as Dagster partitions: ``lake_change_sensor`` registers them and requests runs for
exactly the new and changed ones, the requested runs leave the state a single full refresh leaves,
and batch runs executed several at once (local disk and the loopback S3) mark every batch once."""

# (No ``from __future__ import annotations``: Dagster reads annotations at runtime.)
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView

from aperio_assets.catalog import connect
from aperio_assets.conversion.batches import batch_key
from aperio_assets.conversion.refresh import refresh
from aperio_assets.definitions import build_defs
from aperio_assets.defs import launch
from aperio_assets.defs.launch import refresh_with_runs
from aperio_assets.defs.partitions import BATCHES_PER_RUN_ENV, batches_partitions, ranges
from aperio_assets.defs.resources import AperioResource
from aperio_assets.defs.sensors import CATALOG_JOB
from aperio_assets.lake import Lake, open_lake
from aperio_assets.state import open_lineage, open_tracker
from aperio_tests.helpers import LakeCase, assert_same_state, lake_state, put

SALES = batches_partitions("sales").name


def _delete(lake: Lake, relative: str) -> None:
    lake.lake_storage.delete(lake.lake_storage.join(lake.config.base_directory, relative))


def _tick(defs: dg.Definitions, instance: dg.DagsterInstance, aperio: AperioResource, cursor: str | None):
    # (with the instance's ref, as the daemon gives it: requested partitions are checked against the
    # instance's partitions plus the tick's own additions)
    # (as a context manager: it enters the instance it opens from the ref, which makes that instance's
    # defs-state storage Dagster's current one until it is exited; left open, a later definitions load
    # in this process read it after it was gone: "unable to open database file", run alone)
    with dg.build_sensor_context(
        instance_ref=instance.get_ref(), resources={"aperio": aperio}, cursor=cursor, definitions=defs
    ) as context:
        return defs.resolve_sensor_def("lake_change_sensor").evaluate_tick(context)


def _apply(defs: dg.Definitions, instance: dg.DagsterInstance, tick, automation_cursor) -> object:
    """What the daemon does with a tick: partitions added and deleted, each run executed, then what
    ``aperio_automation_sensor`` requests once they have finished: each schema's model and the views,
    once. Returns the automation cursor."""
    for request in tick.dynamic_partitions_requests:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
    for request in tick.run_requests:
        job = defs.resolve_job_def(request.job_name)
        assert job.execute_in_process(
            instance=instance, partition_key=request.partition_key, tags=dict(request.tags)
        ).success
    automation = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=automation_cursor)
    requested = {r.key.to_user_string(): r.true_subset.size for r in automation.results if r.true_subset.size}
    assert requested == {"sales/generated_model": 1, "aperio/catalog_views": 1}  # once each, after every run
    defs.resolve_job_def(CATALOG_JOB).execute_in_process(instance=instance)
    return automation.cursor


def test_ranges_cover_exactly_what_is_wanted() -> None:
    ordered = [f"k{i}" for i in range(10)]
    assert list(ranges(ordered, {"k1", "k2", "k3", "k5", "k9"}, 2)) == [
        ("k1", "k2"),
        ("k3", "k3"),
        ("k5", "k5"),
        ("k9", "k9"),
    ]
    assert list(ranges(ordered, set(ordered), 4)) == [("k0", "k3"), ("k4", "k7"), ("k8", "k9")]
    assert list(ranges(ordered, set(), 4)) == []


def test_batch_keys_are_readable_and_valid_partition_keys() -> None:
    from aperio_assets.conversion.discovery import RawFile, RawTable
    from aperio_assets.storage import FileInfo

    def key(table: str, partition: tuple = ()) -> str:
        return batch_key(RawTable(table), RawFile(FileInfo("/x", 1, 0.0, None), "x.csv", "csv", partition))

    assert key("flights", (("year", "2013"), ("month", "01"))) == "flights/year=2013/month=01"
    assert key("planes") == "planes"
    assert key("a...b") == "a%2E..b" and key("50%") == "50%25" and key("t", (("k", "a\nb"),)) == "t/k=a%0Ab"
    assert key("a%2E..b") != key("a...b")


@pytest.mark.slow
def test_the_sensor_requests_exactly_the_changed_batches(
    lake_case: LakeCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BATCHES_PER_RUN_ENV, "3")
    lake = lake_case.lake()
    for month in range(1, 8):
        put(lake, f"sales/events/month={month:02d}/a.csv", f"v\n{month}\n".encode())
    put(lake, "sales/customers.csv", b"id\n1\n2\n")
    aperio = AperioResource(config_path=lake_case.config_path)
    defs = build_defs(lake_case.config_path, aperio)
    twin = lake_case.sibling(tmp_path, "twin")  # the same lake, refreshed in one call each time
    with dg.instance_for_test() as instance:
        automation_cursor = dg.evaluate_automation_conditions(defs=defs, instance=instance).cursor
        first = _tick(defs, instance, aperio, None)
        added = [k for r in first.dynamic_partitions_requests for k in r.partition_keys]
        assert added == ["customers", *(f"events/month={m:02d}" for m in range(1, 8)), "orders"]
        # 9 new batches, at most 3 a run: three ranges
        assert [
            (r.tags.get("dagster/asset_partition_range_start"), r.tags.get("dagster/asset_partition_range_end"))
            for r in first.run_requests
        ] == [("customers", "events/month=02"), ("events/month=03", "events/month=05"), ("events/month=06", "orders")]
        automation_cursor = _apply(defs, instance, first, automation_cursor)
        # nothing ran since: the automation condition asks for nothing more
        quiet_automation = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=automation_cursor)
        assert quiet_automation.total_requested == 0
        automation_cursor = quiet_automation.cursor
        # the same lake again: the sensor skips, and a repeated evaluation asks for nothing
        quiet = _tick(defs, instance, aperio, first.cursor)
        assert quiet.run_requests == [] and quiet.dynamic_partitions_requests == []

        # added, changed and removed between ticks
        put(lake, "sales/events/month=08/a.csv", b"v\n8\n")
        put(lake, "sales/events/month=03/a.csv", b"v\n33\n")
        put(lake, "sales/events/month=05/b.csv", b"v\n55\n")
        _delete(lake, "sales/events/month=07/a.csv")
        _delete(lake, "sales/customers.csv")
        second = _tick(defs, instance, aperio, quiet.cursor)
        assert [(type(r).__name__, list(r.partition_keys)) for r in second.dynamic_partitions_requests] == [
            ("AddDynamicPartitionsRequest", ["events/month=08"]),
            ("DeleteDynamicPartitionsRequest", ["customers", "events/month=07"]),
        ]
        requested = sorted(r.partition_key for r in second.run_requests)
        assert requested == ["events/month=03", "events/month=05", "events/month=08"]
        # the same change seen again: the run keys are the same, so Dagster launches nothing twice
        assert {r.run_key for r in _tick(defs, instance, aperio, quiet.cursor).run_requests} == {
            r.run_key for r in second.run_requests
        }
        _apply(defs, instance, second, automation_cursor)
        assert sorted(instance.get_dynamic_partitions(SALES)) == [
            *(f"events/month={m:02d}" for m in (1, 2, 3, 4, 5, 6, 8)),
            "orders",
        ]
        states = instance.get_status_by_partition(
            dg.AssetKey(["sales", "partition_status"]),
            instance.get_dynamic_partitions(SALES),
            batches_partitions("sales"),
        )
        assert {k: v.value for k, v in states.items()} == dict.fromkeys(
            instance.get_dynamic_partitions(SALES), "MATERIALIZED"
        )
    # the twin: the same files, one full refresh
    for month in (1, 2, 3, 4, 5, 6, 8):
        data = lake.lake_storage.read_bytes(
            lake.lake_storage.join(lake.config.base_directory, f"sales/events/month={month:02d}/a.csv")
        )
        put(twin, f"sales/events/month={month:02d}/a.csv", data)
    put(twin, "sales/events/month=05/b.csv", b"v\n55\n")
    put(twin, "sales/orders.csv", b"id\n1\n")
    refresh(twin)
    assert_same_state(lake_state(lake), lake_state(twin))
    assert len(lake_state(lake)["tables"]["events"]) == 8


def _after_a_workers_first_run(run_here: Callable[..., bool]) -> Callable[..., bool]:
    """``launch._run_here`` whose first run waits until a worker has created one: this process is
    warm before its workers, and a small lake's runs could otherwise all be its own."""
    waited: list[bool] = []

    def wait_then_run(defs: dg.Definitions, instance: dg.DagsterInstance, *args: object) -> bool:
        deadline = time.monotonic() + 120
        while not waited and not instance.get_runs(limit=1):  # (any run by now is a worker's)
            assert time.monotonic() < deadline, "no worker process started a run in 120 s"
            time.sleep(0.05)
        waited.append(True)
        return run_here(defs, instance, *args)

    return wait_then_run


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 4])
def test_concurrent_batch_runs_mark_every_batch_once(
    lake_case: LakeCase, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch runs executed ``workers`` at a time, by this process and its worker processes: every
    batch marked once, every file's lineage recorded, each table's rows once."""
    monkeypatch.setenv(BATCHES_PER_RUN_ENV, "4")  # (inherited by the worker processes)
    monkeypatch.setattr(launch, "_run_here", _after_a_workers_first_run(launch._run_here))
    lake = lake_case.lake()
    for day in range(24):
        for part in ("a", "b"):
            put(lake, f"sales/events/day={day:02d}/{part}.csv", f"id,day\n{day}{part},{day}\n".encode())
    with dg.instance_for_test() as instance:
        result = refresh_with_runs(lake_case.config_path, workers=workers, instance=instance)
        assert result.failed == [] and result.batches_added == 25
        runs = instance.get_runs(filters=dg.RunsFilter(job_name="sales_batches_job"))
        assert len(runs) == 7 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)  # 25 batches, 4 a run
        assert (
            len({r.tags.get("dagster/partition") or r.tags["dagster/asset_partition_range_start"] for r in runs}) == 7
        )
        # the batch runs were shared by this process and its workers: more than one process ran
        # them, this one among them, and never more than ``workers`` ran at once
        processes = {
            e.dagster_event.pid
            for r in runs
            for e in instance.all_logs(r.run_id)
            if e.dagster_event and e.dagster_event.pid
        }
        here = [r for r in result.results if r.job_def.name != CATALOG_JOB]
        assert 2 <= len(processes) <= workers and os.getpid() in processes and 1 <= len(here) < len(runs)
        assert [r.job_def.name for r in result.results][-1] == CATALOG_JOB
        spans = [
            (r.start_time, r.end_time) for r in instance.get_run_records(dg.RunsFilter(job_name="sales_batches_job"))
        ]
        assert max(sum(start <= s < end for start, end in spans) for s, _ in spans) <= workers
    lake = open_lake(lake_case.config_path)
    rows = open_tracker(lake, "sales").status_rows("events")
    assert sorted(r["incremental_key_values"] for r in rows) == [
        json.dumps({"day": f"{d:02d}"}, separators=(",", ":")) for d in range(24)
    ]
    assert all(r["row_count"] == 2 for r in rows)
    assert len(open_lineage(lake, "sales").records()) == 49
    with connect(lake) as con:
        assert con.execute("SELECT count(*), count(DISTINCT id) FROM sales.events").fetchone() == (48, 48)
        assert con.execute(
            "SELECT count(*), count(DISTINCT (alternate_name, incremental_key_values)) FROM aperio.partition_status"
        ).fetchone() == (25, 25)


@pytest.mark.parametrize("setting", [None, "0"])
def test_a_batch_run_writes_its_partition_events_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str | None
) -> None:
    """A run of many batches logs two planned and two materialization events per batch; aperio has
    Dagster write them in batches (``DAGSTER_EVENT_BATCH_SIZE``), one by one only if the operator
    set 0. (Dagster's instance, not the lake's storage: local disk only.)"""
    from aperio_assets.definitions import EVENT_BATCH_SIZE_ENV

    PLANNED, MATERIALIZED = dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, dg.DagsterEventType.ASSET_MATERIALIZATION

    if setting is None:
        monkeypatch.delenv(EVENT_BATCH_SIZE_ENV, raising=False)  # (and restored after the test)
    else:
        monkeypatch.setenv(EVENT_BATCH_SIZE_ENV, setting)
    monkeypatch.setenv(BATCHES_PER_RUN_ENV, "8")
    for day in range(8):
        (tmp_path / "lake" / "sales" / "events" / f"day={day:02d}").mkdir(parents=True)
        (tmp_path / "lake" / "sales" / "events" / f"day={day:02d}" / "a.csv").write_text(f"id,day\n{day},{day}\n")
    config = tmp_path / "aperio.yaml"
    config.write_text("baseDirectory: lake\n")
    with dg.instance_for_test() as instance:
        storage = instance.event_log_storage
        batches: list[list[str]] = []
        store_batch = storage.store_event_batch

        def counted(events):  # what reaches the storage as one batch (of the range run)
            batches.append([(e.run_id, e.dagster_event_type) for e in events])
            return store_batch(events)

        monkeypatch.setattr(storage, "store_event_batch", counted)
        result = refresh_with_runs(str(config), workers=1, instance=instance)
        assert result.failed == [] and result.batches_added == 8
        assert result.runs[0][1] == "events/day=00...events/day=07"
        run_id = result.results[0].run_id
        logged = instance.get_records_for_run(run_id).records
        kinds = [r.event_log_entry.dagster_event_type for r in logged if r.event_log_entry.is_dagster_event]
        assert kinds.count(PLANNED) == kinds.count(MATERIALIZED) == 16
        # every event is kept, though the console (at INFO by default) prints none of these
        assert dg.DagsterEventType.STEP_START in kinds and dg.DagsterEventType.RUN_SUCCESS in kinds
        # and no line per file (a write to the instance's storage each): the files go to a Python logger
        messages = [r.event_log_entry.user_message for r in logged if not r.event_log_entry.is_dagster_event]
        assert not [m for m in messages if "day=" in m], messages
    of_the_run = [[kind for run, kind in batch if run == run_id] for batch in batches]
    of_the_run = [batch for batch in of_the_run if batch]
    if setting == "0":
        assert batches == []
    else:  # the planned events in one batch, the materializations in one or two (one per asset)
        assert of_the_run[0] == [PLANNED] * 16
        assert [k for batch in of_the_run[1:] for k in batch] == [MATERIALIZED] * 16
        assert len(of_the_run) <= 3, [len(b) for b in of_the_run]


def _two_schemas(tmp_path: Path) -> tuple[dg.Definitions, AperioResource]:
    """A lake of two schemas, one batch each (sales: a Hive partition; ref: a table), and its
    definitions."""
    for relative, text in {"sales/events/day=01/a.csv": "id\n1\n", "ref/carriers.csv": "code\nAA\n"}.items():
        (tmp_path / "lake" / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "lake" / relative).write_text(text)
    config = tmp_path / "aperio.yaml"
    config.write_text("baseDirectory: lake\n")
    aperio = AperioResource(config_path=str(config))
    return build_defs(str(config), aperio), aperio


def _registered_tick(defs: dg.Definitions, instance: dg.DagsterInstance, aperio: AperioResource):
    """The first lake sensor tick, its new batches registered as partitions (as the daemon does)."""
    tick = _tick(defs, instance, aperio, None)
    for request in tick.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return tick


def test_the_views_wait_for_every_schemas_batches(tmp_path: Path) -> None:
    """A wave of batch runs over two schemas: once one schema's runs have finished, its model may
    run, but not the views while the other schema's batch run is still queued (the views of both
    are built once, after every batch; a migrated view reading the other schema would not resolve)."""
    defs, aperio = _two_schemas(tmp_path)
    with dg.instance_for_test() as instance:
        before = dg.evaluate_automation_conditions(defs=defs, instance=instance).cursor  # (nothing updated yet)
        tick = _registered_tick(defs, instance, aperio)
        by_job = {r.job_name: r for r in tick.run_requests}
        assert set(by_job) == {"sales_batches_job", "ref_batches_job"}
        sales = by_job["sales_batches_job"]
        assert (
            defs.resolve_job_def(sales.job_name)
            .execute_in_process(instance=instance, partition_key=sales.partition_key, tags=dict(sales.tags))
            .success
        )
        ref = by_job["ref_batches_job"]  # created, not started (as a queued run): in progress
        waiting = instance.create_run_for_job(
            job_def=defs.resolve_job_def(ref.job_name), tags={**ref.tags, "dagster/partition": ref.partition_key}
        )
        assert waiting.status == dg.DagsterRunStatus.NOT_STARTED
        automation = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=before)
        requested = {r.key.to_user_string() for r in automation.results if r.true_subset.size}
        assert requested == {"sales/generated_model"}
        # once the other schema's batch has run (the waiting run given up, another run doing it), its
        # model and the views follow
        instance.report_run_canceled(waiting)
        assert (
            defs.resolve_job_def(ref.job_name)
            .execute_in_process(instance=instance, partition_key=ref.partition_key, tags=dict(ref.tags))
            .success
        )
        automation = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=automation.cursor)
        requested = {r.key.to_user_string() for r in automation.results if r.true_subset.size}
        assert requested == {"ref/generated_model", "aperio/catalog_views"}


def test_the_views_wait_for_a_schema_whose_batch_run_ends_during_the_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tick reads the runs' progress asset by asset, not at one moment. The ref schema's batch run
    ends during the tick: before the tick's first question about the ref batches, they are in
    progress and not updated; after it, updated and not in progress. Whatever its model was told,
    the views are not built from the ref model as it was (seen in the deployment test, a migrated
    view lost the other schema's table): the views wait for the ref model, which the next tick runs."""
    defs, aperio = _two_schemas(tmp_path)
    with dg.instance_for_test() as instance:
        before = dg.evaluate_automation_conditions(defs=defs, instance=instance).cursor  # (nothing updated yet)
        tick = _registered_tick(defs, instance, aperio)
        for request in tick.run_requests:  # both schemas' batch runs, done by the end of the tick
            job = defs.resolve_job_def(request.job_name)
            tags = dict(request.tags)
            assert job.execute_in_process(instance=instance, partition_key=request.partition_key, tags=tags).success

        in_progress = AssetGraphView._compute_run_in_progress_asset_subset
        updated = AssetGraphView._compute_updated_since_cursor_subset
        ended: list[bool] = []  # (the ref run ends right after the tick's first question about it)

        async def in_progress_then(view: AssetGraphView, key: dg.AssetKey) -> object:
            if key.path[0] == "ref" and not ended:
                ended.append(True)
                return view.get_full_subset(key=key)
            return await in_progress(view, key)

        async def updated_then(view: AssetGraphView, key: dg.AssetKey, cursor: int | None) -> object:
            if key.path[0] == "ref" and not ended:
                ended.append(True)
                return view.get_empty_subset(key=key)
            return await updated(view, key, cursor=cursor)

        monkeypatch.setattr(AssetGraphView, "_compute_run_in_progress_asset_subset", in_progress_then)
        monkeypatch.setattr(AssetGraphView, "_compute_updated_since_cursor_subset", updated_then)
        automation = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=before)
        assert ended  # the ref batches were asked about during the tick
        requested = {r.key.to_user_string() for r in automation.results if r.true_subset.size}
        assert requested == {"sales/generated_model"}
        monkeypatch.undo()
        # the next tick: the ref model and, with it, the views
        automation = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=automation.cursor)
        requested = {r.key.to_user_string() for r in automation.results if r.true_subset.size}
        assert requested == {"ref/generated_model", "aperio/catalog_views"}

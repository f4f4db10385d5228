"""aperio's PostgreSQL storages for Dagster (``aperio_assets.instance.postgres``), on a real
PostgreSQL server: a run's planned events written as one batch read back exactly as Dagster's own
storage leaves them written one by one, on one connection instead of two per event; and aperio's
runs on them still show a failed batch as a failed partition, retried alone."""

# (No ``from __future__ import annotations``: Dagster reads the test asset's annotations at runtime.)
import contextlib
import re
import tempfile
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as db
from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.migration import ASSET_KEY_INDEX_COLS
from dagster_postgres.event_log import PostgresEventLogStorage

from aperio_assets.definitions import batch_partition_events
from aperio_assets.instance.postgres import BatchingPostgresEventLogStorage, instance_storage
from aperio_tests.helpers import LakeCase, partition_states, postgres, put, refresh_all

PLANNED = DagsterEventType.ASSET_MATERIALIZATION_PLANNED
PARTITIONS = dg.StaticPartitionsDefinition([f"day{i}" for i in range(6)])


@dg.multi_asset(
    specs=[dg.AssetSpec("lineage"), dg.AssetSpec("status")],
    partitions_def=PARTITIONS,
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def pair(context: dg.AssetExecutionContext) -> Iterator[dg.MaterializeResult]:
    yield dg.MaterializeResult(asset_key="lineage")
    yield dg.MaterializeResult(asset_key="status")


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    with postgres() as running:
        yield running


_databases = iter(range(1, 1_000))


def database_url(server: Any) -> str:
    name = f"instance_test_{next(_databases)}"
    server.psql(f"CREATE DATABASE {name};")
    # psycopg2, the driver installed (deploy/dagster.yaml names it the same way)
    return re.sub(r"^postgresql://", "postgresql+psycopg2://", server.get_uri(name))


def planned_events_of_a_ranged_run(monkeypatch: pytest.MonkeyPatch) -> list[EventLogEntry]:
    """The planned events of a real run over 4 of the 6 partitions (2 assets each), as Dagster
    hands them to ``store_event_batch``."""
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
    job = dg.Definitions(assets=[pair], jobs=[dg.define_asset_job("pair_job", [pair])]).resolve_job_def("pair_job")
    tags = {"dagster/asset_partition_range_start": "day1", "dagster/asset_partition_range_end": "day4"}
    with dg.instance_for_test() as instance:
        run_id = job.execute_in_process(instance=instance, tags=tags).run_id
        events = instance.all_logs(run_id, of_type=PLANNED)
    assert len(events) == 8
    return events


def checkouts(storage: PostgresEventLogStorage) -> list[int]:
    """A list that grows by one each time the storage takes a connection from its engine."""
    taken: list[int] = []
    db.event.listen(storage._engine, "checkout", lambda *args: taken.append(1))
    return taken


def stored(storage: PostgresEventLogStorage, run_id: str) -> dict[str, Any]:
    """Everything a reader of the event log gets back about the run's planned events."""
    keys = [dg.AssetKey("lineage"), dg.AssetKey("status")]
    return {
        "records": [
            (r.storage_id, r.event_log_entry) for r in storage.get_records_for_run(run_id, of_type=PLANNED).records
        ],
        "asset entries": {
            r.asset_entry.asset_key.to_user_string(): (
                r.asset_entry.last_run_id,
                r.asset_entry.last_planned_materialization_storage_id,
                r.asset_entry.last_planned_materialization_run_id,
            )
            for r in storage.get_asset_records(keys)
        },
        "planned info": {
            (key.to_user_string(), partition): storage.get_latest_planned_materialization_info(key, partition)
            for key in keys
            for partition in PARTITIONS.get_partition_keys()
        },
    }


def test_a_batch_of_planned_events_reads_back_as_single_writes(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    events = planned_events_of_a_ranged_run(monkeypatch)
    run_id = events[0].run_id
    stock = PostgresEventLogStorage(database_url(server))
    batching = BatchingPostgresEventLogStorage(database_url(server))
    try:
        for event in events:  # what Dagster 1.13's own storage does with this batch
            stock.store_event(event)
        batching.has_secondary_index(ASSET_KEY_INDEX_COLS)  # (looked up once per storage, then cached)
        taken = checkouts(batching)
        batching.store_event_batch(events)
        assert len(taken) == 1  # one connection, one transaction (Dagster's: two per event)
        expected = stored(stock, run_id)
        assert [entry for _, entry in expected["records"]] == events  # (the reference is what was given)
        assert expected["asset entries"]["lineage"][0] == run_id
        assert {p for (_, p), info in expected["planned info"].items() if info} == {"day1", "day2", "day3", "day4"}
        assert stored(batching, run_id) == expected  # the same ids too: both databases started empty
    finally:
        stock.dispose()
        batching.dispose()


def test_other_batches_are_dagsters_own(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch that is not only planned asset events (here: one event) takes Dagster's path."""
    events = planned_events_of_a_ranged_run(monkeypatch)
    batching = BatchingPostgresEventLogStorage(database_url(server))
    written: list[EventLogEntry] = []
    monkeypatch.setattr(PostgresEventLogStorage, "store_event_batch", lambda self, batch: written.extend(batch))
    try:
        batching.store_event_batch(events[:1])
        assert written == events[:1]
        assert batching.get_records_for_run(events[0].run_id).records == []
    finally:
        batching.dispose()


@contextlib.contextmanager
def aperio_postgres_instance(server: Any) -> Iterator[dg.DagsterInstance]:
    with tempfile.TemporaryDirectory(prefix="aperio-instance-") as home:
        overrides = instance_storage({"postgres_url": database_url(server)})
        with dg.DagsterInstance.local_temp(home, overrides=overrides) as instance:
            yield instance


@pytest.mark.slow
def test_a_failed_batch_is_a_failed_partition_and_retried_alone(
    lake_case: LakeCase, server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aperio's batch runs on aperio's PostgreSQL storages: their planned events go through the
    batch path, and Dagster still sees the failed batch as a failed partition, then fixed."""
    batch_partition_events()
    batches: list[int] = []
    original = BatchingPostgresEventLogStorage.store_event_batch

    def spy(self: BatchingPostgresEventLogStorage, events: list[EventLogEntry]) -> None:
        if all(e.dagster_event_type == PLANNED for e in events):
            batches.append(len(events))
        original(self, events)

    monkeypatch.setattr(BatchingPostgresEventLogStorage, "store_event_batch", spy)
    lake = lake_case.lake()
    put(lake, "sales/broken.json", b"{not json")
    with aperio_postgres_instance(server) as instance:
        assert type(instance.event_log_storage) is BatchingPostgresEventLogStorage
        refresh_all(lake_case.config_path, instance, expect_success=False)
        assert partition_states(instance, "sales") == {"broken": "FAILED", "orders": "MATERIALIZED"}
        assert 4 in batches  # the batch run planned its 2 batches x (lineage, status) in one write
        put(lake, "sales/broken.json", b'[{"a": 1}]')
        refresh_all(lake_case.config_path, instance)
        assert partition_states(instance, "sales") == {"broken": "MATERIALIZED", "orders": "MATERIALIZED"}


def test_a_forked_child_opens_its_own_connection(server: Any) -> None:
    """The held connection is the parent's: a forked child drops it (without closing the parent's
    socket) and connects anew; the parent's connection still works after."""
    import os

    storage = BatchingPostgresEventLogStorage(database_url(server))
    try:
        storage.get_records_for_run("none")  # the connection is held from here
        parent_connection = storage._engine.pool.checkedin()
        assert parent_connection == 1
        pid = os.fork()
        if pid == 0:  # the child: a pool of its own, empty, then one connection of its own
            code = 0 if storage._engine.pool.checkedin() == 0 else 3
            try:
                storage.get_records_for_run("none")
            except Exception:
                code = 4
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert storage.get_records_for_run("none").records == []  # the parent's still answers
    finally:
        storage.dispose()

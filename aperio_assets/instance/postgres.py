"""Dagster's PostgreSQL storage, as aperio's runs need it: a run's planned events written in one
transaction, and one held connection per instance instead of one new connection per statement.

Dagster 1.13's ``PostgresEventLogStorage`` writes a batch of events in one statement only when they
are all materializations or all observations; any other batch falls back to one ``store_event`` per
event, and the engine holds no connection, so each of those opens a new one (two for an asset
event: the event row, then the asset's index row). A run of a range of ``N`` batches plans ``2 N``
asset partitions (the lineage and status of each batch), so a 50-batch run opened ~200 connections
before its first step, each a PostgreSQL backend started and stopped. The scale-out bench spent about
half of a Dagster refresh there (docs/BENCHMARKS.md). The batching is pending upstream
(dagster-io/dagster#33832); until it lands:

- ``BatchingPostgresEventLogStorage``: a batch of planned asset events is one multi-row insert of
  the event rows, then each asset key's index row (from the key's last event, what a sequence of
  single writes leaves), in one transaction on one connection. Every other batch, and every single
  event, is written by Dagster's own code.
- it and ``PooledPostgresRunStorage`` keep one connection open per instance (more, briefly, when
  threads write at once), as Dagster's webserver does (``optimize_for_webserver``: recycled after an
  hour, no ping before each use); the connection is closed when the instance is disposed and never
  shared with a forked child.

``dagster.yaml`` names them per storage instead of ``storage: postgres`` (``deploy/dagster.yaml``);
:func:`instance_storage` builds that part of an instance's configuration.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log import SqlEventLogStorageTable
from dagster._serdes import ConfigurableClassData
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config

MODULE = __name__
EVENT_LOG_CLASS = "BatchingPostgresEventLogStorage"
RUN_CLASS = "PooledPostgresRunStorage"
# how long a held connection is used before it is replaced (a server or proxy may drop idle ones)
POOL_RECYCLE_SECONDS = 3600


def instance_storage(postgres: Mapping[str, Any]) -> dict[str, Any]:
    """The storage part of a Dagster instance's configuration on one PostgreSQL: ``postgres`` is
    what ``storage: postgres:`` takes (``postgres_db: {...}`` or ``postgres_url: ...``)."""
    config = dict(postgres)
    return {
        "run_storage": {"module": MODULE, "class": RUN_CLASS, "config": config},
        "event_log_storage": {"module": MODULE, "class": EVENT_LOG_CLASS, "config": config},
        "schedule_storage": {
            "module": "dagster_postgres.schedule_storage",
            "class": "PostgresScheduleStorage",
            "config": config,
        },
    }


# Engines that hold connections, forgotten (not closed: the parent's sockets) in a forked child, which
# opens its own (SQLAlchemy's advice). One hook for the process, however many instances it opens.
_HELD_ENGINES: weakref.WeakSet[Any] = weakref.WeakSet()


def _forget_held_connections() -> None:
    for engine in list(_HELD_ENGINES):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_held_connections)


class _HeldConnection:
    """For a Dagster PostgreSQL storage (before it in the bases): its engine (which holds no
    connection) replaced by one that keeps a connection between statements, closed on dispose; the
    storage built from ``dagster.yaml``'s fields as Dagster's own is."""

    postgres_url: str
    _engine: Any
    _token_provider: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._engine = create_pg_engine(
            self.postgres_url,
            self._token_provider,
            isolation_level="AUTOCOMMIT",
            pool_size=1,
            max_overflow=10,
            pool_recycle=POOL_RECYCLE_SECONDS,
        )
        _HELD_ENGINES.add(self._engine)

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]) -> Any:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )

    def dispose(self) -> None:
        super().dispose()  # type: ignore[misc]
        self._engine.dispose()


class PooledPostgresRunStorage(_HeldConnection, PostgresRunStorage):
    """``PostgresRunStorage`` holding one connection per instance."""


class BatchingPostgresEventLogStorage(_HeldConnection, PostgresEventLogStorage):
    """``PostgresEventLogStorage`` writing a batch of planned asset events at once, holding one
    connection per instance."""

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        if len(events) < 2 or not all(_is_planned_asset_event(e) for e in events):
            super().store_event_batch(events)
            return
        with self.index_transaction() as conn:
            # (no NOTIFY per event: Dagster no longer listens, and its own batch path sends none)
            inserted = conn.execute(
                self.prepare_insert_event_batch(events).returning(SqlEventLogStorageTable.c.id)
            ).fetchall()
            if len(inserted) != len(events):  # never expected; raising rolls the insert back
                raise RuntimeError(f"{len(events)} planned events were stored as {len(inserted)} rows")
            event_ids = [int(row[0]) for row in inserted]
            self._store_asset_event_tags(conn, events, event_ids)
            last_of_key: dict[str, tuple[EventLogEntry, int]] = {}
            for event, event_id in zip(events, event_ids, strict=True):
                last_of_key[event.get_dagster_event().asset_key.to_string()] = (event, event_id)  # type: ignore[union-attr]
            for event, event_id in last_of_key.values():
                self._store_asset_event(conn, event, event_id)


def _is_planned_asset_event(event: EventLogEntry) -> bool:
    dagster_event = event.dagster_event
    return (
        dagster_event is not None
        and dagster_event.event_type == DagsterEventType.ASSET_MATERIALIZATION_PLANNED
        and dagster_event.asset_key is not None
    )

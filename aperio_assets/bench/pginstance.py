"""Dagster instances for the bench's Dagster runs: a temporary SQLite one (Dagster's default), or
one on a PostgreSQL server started from the ``pgserver`` wheel, as a multi-node deployment keeps
its run and event-log storage (``deploy/dagster.yaml``). Never the user's ``$DAGSTER_HOME``."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

INSTANCE_STORAGES = ("sqlite", "postgres")


class PostgresUnavailable(RuntimeError):
    pass


@contextlib.contextmanager
def postgres_server(directory: Path) -> Iterator[Any]:
    """A PostgreSQL server with its data in ``directory`` (``pgserver``), stopped on exit."""
    try:
        import pgserver
    except ImportError as exc:
        raise PostgresUnavailable(f"pgserver is not installed ({exc}); pip install pgserver") from None
    directory.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(directory / "data", cleanup_mode="stop")
    try:
        yield server
    finally:
        if os.geteuid() == 0:
            # As root, pgserver runs PostgreSQL as its own user, after opening the path to the data
            # for it; open it again (as pgserver did at start) in case anything closed it since, or
            # `pg_ctl stop` could no longer reach the data.
            from pgserver.utils import ensure_prefix_permissions

            ensure_prefix_permissions(directory / "data")
        server.cleanup()


class InstanceFactory:
    """A new, empty Dagster instance per measured run: ``with factory.instance() as instance``."""

    def __init__(self, storage: str, server: Any | None = None) -> None:
        if storage not in INSTANCE_STORAGES:
            raise ValueError(f"unknown instance storage {storage!r} (one of {', '.join(INSTANCE_STORAGES)})")
        self.storage, self.server = storage, server
        self._databases = itertools.count(1)

    @contextlib.contextmanager
    def instance(self) -> Iterator[Any]:
        import dagster as dg

        from aperio_assets.instance.postgres import instance_storage

        if self.storage == "sqlite":
            with dg.DagsterInstance.local_temp() as instance:
                yield instance
            return
        name = f"bench_{os.getpid()}_{next(self._databases)}"  # an empty database per run
        self.server.psql(f"CREATE DATABASE {name};")
        # psycopg2: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which is not installed
        url = re.sub(r"^postgresql://", "postgresql+psycopg2://", self.server.get_uri(name))
        with tempfile.TemporaryDirectory(prefix="aperio-bench-dagster-") as home:
            # as deploy/dagster.yaml keeps them: aperio's batching, connection-holding storages
            overrides = instance_storage({"postgres_url": url})
            with dg.DagsterInstance.local_temp(home, overrides=overrides) as instance:
                yield instance


@contextlib.contextmanager
def instance_factory(storage: str, workdir: Path) -> Iterator[InstanceFactory]:
    """Instances of ``storage`` kind; for ``postgres``, one server for the whole bench."""
    if storage == "postgres":
        with postgres_server(workdir / "postgres") as server:
            yield InstanceFactory(storage, server)
    else:
        yield InstanceFactory(storage)

"""The Dagster resource that gives assets, ops and sensors the configured lake."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import dagster as dg
import duckdb
from pydantic import PrivateAttr

from aperio_assets.catalog.connect import CatalogReport, open_catalog
from aperio_assets.config import CONFIG_ENV, find_config_path
from aperio_assets.lake import Lake, open_lake
from aperio_assets.state import ConversionLineage, IncrementalTracker, open_lineage, open_tracker
from aperio_assets.state.access import StateAccess, carry_tables, open_state
from aperio_assets.storage import StorageProvider


class AperioResource(dg.ConfigurableResource):
    """The lake described by an ``aperio.yaml`` (path from ``$APERIO_CONFIG`` by default): its
    storage, trackers, lineage, state tables and catalog, all from the library."""

    config_path: str
    _lake: Lake | None = PrivateAttr(default=None)
    _run_id: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._run_id = context.run.run_id if context.run is not None else None

    def lake(self) -> Lake:
        # One Lake per run in a process (a sensor tick: per resource instance): the config is read,
        # the schemas discovered and each state table opened once. Dagster hands the IO manager its
        # own copy of this resource: keyed by run, both copies share the step's Lake, so the IO
        # manager's reads of a state table fetch only the files the step did not read.
        if self._lake is None:
            if self._run_id is None:
                self._lake = open_lake(self.config_path)
            else:
                self._lake = _run_lake(self._run_id, self.config_path)
        return self._lake

    def storage(self) -> StorageProvider:
        return self.lake().storage

    def tracker(self, schema: str) -> IncrementalTracker:
        return open_tracker(self.lake(), schema)

    def lineage(self, schema: str) -> ConversionLineage:
        return open_lineage(self.lake(), schema)

    def state(self, schema: str | None, table: str) -> StateAccess:
        """State table ``table`` of ``schema`` (``views``: schema None) in the schema's mode."""
        return open_state(self.lake(), schema, table)

    def catalog(self) -> tuple[duckdb.DuckDBPyConnection, CatalogReport]:
        """An in-memory DuckDB catalog of the lake, and the report of what registered."""
        return open_catalog(self.lake())


_RUN_LAKES: OrderedDict[tuple[str, str], Lake] = OrderedDict()
_RUN_LAKES_KEPT = 4  # runs executed in one process (in-process runs, the launcher) do not pile up
_RUN_LAKES_LOCK = threading.Lock()


def _run_lake(run_id: str, config_path: str) -> Lake:
    with _RUN_LAKES_LOCK:
        key = (run_id, config_path)
        lake = _RUN_LAKES.get(key)
        if lake is None:
            lake = open_lake(config_path)
            # A process that executes several runs (a launcher worker) reads each state file once:
            # a run's Lake takes the state tables of the process's last run on the same configuration
            # (the configuration and the schemas are still read anew for each run).
            previous = next((held for (_, path), held in reversed(_RUN_LAKES.items()) if path == config_path), None)
            if previous is not None:
                carry_tables(previous, lake)
            _RUN_LAKES[key] = lake
            while len(_RUN_LAKES) > _RUN_LAKES_KEPT:
                _RUN_LAKES.popitem(last=False)
        return lake


def default_aperio_resource() -> AperioResource:
    """The configuration found the way the CLI finds it: ``$APERIO_CONFIG`` (read by each process
    that runs: a deployment sets it on every node), else ``./aperio.yaml`` of the process that loads
    the code location, as an absolute path (so a run worker started elsewhere reads the same file;
    if there is none, its runs fail naming the path looked for)."""
    if os.environ.get(CONFIG_ENV):
        return AperioResource(config_path=dg.EnvVar(CONFIG_ENV))
    return AperioResource(config_path=str(find_config_path().resolve()))

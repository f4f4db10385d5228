"""The Dagster code location: ``aperio_assets.definitions:defs``.

The state assets are generated from the configuration (``$APERIO_CONFIG``, else ``./aperio.yaml``)
when the code location loads: one group per schema. A schema folder added later appears when the
code location is reloaded. Without any configuration file the location still loads, with the
maintenance jobs only (and a warning); an invalid configuration fails the load with its one-line
message.
"""

from __future__ import annotations

import logging
import os

import dagster as dg

from aperio_assets.config import SchemaConfig, find_config_path
from aperio_assets.defs.assets import STATE_IO_MANAGER, catalog_views_asset, schema_assets
from aperio_assets.defs.checks import lake_checks
from aperio_assets.defs.io_managers import SharedParquetIOManager
from aperio_assets.defs.maintenance import (
    compact_state_job,
    compact_state_schedule,
    legacy_state_sensor,
    migrate_legacy_state_job,
    rebuild_views_job,
    rebuild_views_schedule,
)
from aperio_assets.defs.resources import AperioResource, default_aperio_resource
from aperio_assets.lake import open_lake

log = logging.getLogger(__name__)

aperio_refresh_job = dg.define_asset_job(
    "aperio_refresh_job", selection=dg.AssetSelection.all(),
    description="Refresh the whole lake: convert changed files, record lineage and partition status, regenerate "
                "the models and the view definitions, and check the state's health.")


def configured_schemas(config_path: str | os.PathLike[str] | None = None) -> list[SchemaConfig]:
    path = find_config_path(config_path)
    if not path.exists():
        log.warning("aperio: no configuration at %s (set APERIO_CONFIG): the code location has no state assets",
                    path)
        return []
    return open_lake(path).schemas()


def build_defs(config_path: str | os.PathLike[str] | None = None,
               aperio: AperioResource | None = None) -> dg.Definitions:
    """Definitions for the lake configured at ``config_path`` (default: ``$APERIO_CONFIG``)."""
    schemas = configured_schemas(config_path)
    resource = aperio or default_aperio_resource()
    assets = [a for schema in schemas for a in schema_assets(schema)] + [catalog_views_asset(schemas)]
    return dg.Definitions(
        assets=assets,
        asset_checks=lake_checks(schemas),
        jobs=[aperio_refresh_job, migrate_legacy_state_job, compact_state_job, rebuild_views_job],
        schedules=[compact_state_schedule, rebuild_views_schedule],
        sensors=[legacy_state_sensor],
        resources={"aperio": resource, STATE_IO_MANAGER: SharedParquetIOManager(aperio=resource)},
    )


defs = build_defs()

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
from aperio_assets.defs.assets import (
    CATALOG_VIEWS,
    STATE_IO_MANAGER,
    batches_job,
    catalog_views_asset,
    model_key,
    schema_assets,
)
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
from aperio_assets.defs.partitions import AssetJob
from aperio_assets.defs.refresh_job import aperio_refresh_job
from aperio_assets.defs.resources import AperioResource, default_aperio_resource
from aperio_assets.defs.sensors import CATALOG_JOB, lake_change_sensor
from aperio_assets.lake import open_lake

log = logging.getLogger(__name__)


def configured_schemas(config_path: str | os.PathLike[str] | None = None) -> list[SchemaConfig]:
    path = find_config_path(config_path)
    if not path.exists():
        log.warning("aperio: no configuration at %s (set APERIO_CONFIG): the code location has no state assets", path)
        return []
    return open_lake(path).schemas()


def catalog_job(schemas: list[SchemaConfig]) -> AssetJob:
    return dg.define_asset_job(
        CATALOG_JOB,
        selection=dg.AssetSelection.assets(*(model_key(s.name) for s in schemas), CATALOG_VIEWS),
        description="After the batches: every schema's model (forgetting files and batches that are gone), the "
        "view definitions, and the state checks.",
    )


def build_defs(
    config_path: str | os.PathLike[str] | None = None, aperio: AperioResource | None = None
) -> dg.Definitions:
    """Definitions for the lake configured at ``config_path`` (default: ``$APERIO_CONFIG``)."""
    schemas = configured_schemas(config_path)
    resource = aperio or default_aperio_resource()
    assets = [a for schema in schemas for a in schema_assets(schema)] + [catalog_views_asset(schemas)]
    jobs = [batches_job(s.name) for s in schemas] + [catalog_job(schemas)]
    sensors = [legacy_state_sensor]
    if schemas:
        sensors += [
            lake_change_sensor(schemas, jobs),
            dg.AutomationConditionSensorDefinition(
                "aperio_automation_sensor",
                target=dg.AssetSelection.assets(*(model_key(s.name) for s in schemas), CATALOG_VIEWS),
                default_status=dg.DefaultSensorStatus.RUNNING,
                description="Runs each schema's model and the view definitions once after a wave of "
                "batch runs has finished.",
            ),
        ]
    return dg.Definitions(
        assets=assets,
        asset_checks=lake_checks(schemas),
        jobs=[*jobs, aperio_refresh_job, migrate_legacy_state_job, compact_state_job, rebuild_views_job],
        schedules=[compact_state_schedule, rebuild_views_schedule],
        sensors=sensors,
        resources={"aperio": resource, STATE_IO_MANAGER: SharedParquetIOManager(aperio=resource)},
    )


defs = build_defs()

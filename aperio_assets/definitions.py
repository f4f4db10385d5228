"""The Dagster code location, laid out the ``dg`` way (``[tool.dg]`` in pyproject.toml): ``defs``, a
``@dg.definitions`` function, merges

- the ``aperio_assets/defs/`` folder, loaded by Dagster's defs-folder loader: every object that
  does not depend on the lake, each defined once at module scope (the maintenance jobs, schedules and
  sensor, ``aperio_refresh_job``, ``catalog_views_job``, the checks of ``aperio/catalog_views``); and
- ``lake_definitions``: what is generated from the configuration (``$APERIO_CONFIG``, else
  ``./aperio.yaml``): per schema its group of state assets, checks and batches job, then
  ``aperio/catalog_views``, ``aperio_catalog_job``, the two lake sensors and the resources.

Importing this module reads nothing: the configuration is read (and, if the schemas are not listed
in it, the top of the lake listed) when Dagster calls ``defs``, once per load of the code location. A
schema folder added later appears when the code location is reloaded. Without any configuration
file the location still loads, without state assets but ``aperio/catalog_views`` (and a warning); an
invalid configuration fails the load with its one-line message.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from pathlib import Path

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
from aperio_assets.defs.partitions import AssetJob
from aperio_assets.defs.resources import AperioResource, default_aperio_resource
from aperio_assets.defs.sensors import AUTOMATION_SENSOR_INTERVAL, CATALOG_JOB, lake_change_sensor, sensor_interval
from aperio_assets.lake import open_lake

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent


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


def defs_folder() -> dg.Definitions:
    """The objects of the ``aperio_assets/defs/`` folder, loaded by Dagster's defs-folder loader (the
    component tree ``dg.load_from_defs_folder`` builds). None depends on the configuration; loading
    them imports the folder's modules and reads nothing else."""
    # From the package itself, not from pyproject.toml's [tool.dg.project]: an installed package (as
    # deploy/Dockerfile installs it, not editable) has no pyproject.toml above it.
    tree = dg.ComponentTree.from_module(
        defs_module=importlib.import_module("aperio_assets.defs"), project_root=PACKAGE_DIR.parent
    )
    # The folder, not the project's root (what load_from_defs_folder builds): the root also lists the
    # component types of every installed Dagster plugin, importing dagster_aws' components: 0.8-0.9 s
    # more for every process that loads the location (the code server, each run worker and step process).
    with warnings.catch_warnings():
        # (the module loader is marked preview; load_from_defs_folder silences that warning too)
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return tree.build_defs(tree.defs_module_path)


def lake_definitions(
    config_path: str | os.PathLike[str] | None = None, aperio: AperioResource | None = None
) -> dg.Definitions:
    """What the configuration at ``config_path`` (default: ``$APERIO_CONFIG``) generates, with the
    resources (``aperio``: default, the configuration found as the CLI finds it)."""
    schemas = configured_schemas(config_path)
    resource = aperio or default_aperio_resource()
    assets = [a for schema in schemas for a in schema_assets(schema)] + [catalog_views_asset(schemas)]
    jobs = [batches_job(s.name) for s in schemas] + [catalog_job(schemas)]
    sensors: list[dg.SensorDefinition] = []
    if schemas:
        sensors += [
            lake_change_sensor(schemas, jobs),
            dg.AutomationConditionSensorDefinition(
                "aperio_automation_sensor",
                target=dg.AssetSelection.assets(*(model_key(s.name) for s in schemas), CATALOG_VIEWS),
                default_status=dg.DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=sensor_interval(AUTOMATION_SENSOR_INTERVAL),
                description="Runs each schema's model and the view definitions once after a wave of "
                "batch runs has finished.",
            ),
        ]
    return dg.Definitions(
        assets=assets,
        asset_checks=lake_checks(schemas),
        jobs=jobs,
        sensors=sensors,
        resources={"aperio": resource, STATE_IO_MANAGER: SharedParquetIOManager(aperio=resource)},
        # Every job's steps in its run worker's own process: aperio's parallelism is runs (the run
        # queue, a range of batches each), and a run's steps are one batch step, or the models, the
        # views and their checks, each light; a process per step (Dagster's default) cost each run
        # a Python start and a code-location load per step (DESIGN §9).
        executor=dg.in_process_executor,
    )


EVENT_BATCH_SIZE_ENV = "DAGSTER_EVENT_BATCH_SIZE"
EVENT_BATCH_SIZE = "1000"


def batch_partition_events() -> None:
    """Have Dagster write a batch run's per-partition events in batches (its own setting, off by
    default): a run of 50 batches logs two planned and two materialization events per batch, and
    written one by one (a connection and a commit each) they were most of a run's time (DESIGN §9).
    Set here for the processes that load the code location (run workers: the materializations); the
    processes that create runs (daemon, webserver) need it in their environment (deploy/README.md).
    An operator's own value, 0 included, is kept."""
    os.environ.setdefault(EVENT_BATCH_SIZE_ENV, EVENT_BATCH_SIZE)


def build_defs(
    config_path: str | os.PathLike[str] | None = None, aperio: AperioResource | None = None
) -> dg.Definitions:
    """The code location's definitions for the lake configured at ``config_path`` (default:
    ``$APERIO_CONFIG``): what ``defs`` loads, for any configuration (tests, the launcher)."""
    batch_partition_events()
    return dg.Definitions.merge(defs_folder(), lake_definitions(config_path, aperio))


@dg.definitions
def defs() -> dg.Definitions:
    """The code location (``dagster dev``, ``dg``, the code server, run workers)."""
    return build_defs()

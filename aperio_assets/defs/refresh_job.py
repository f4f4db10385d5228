"""``aperio_refresh_job``: the whole lake refreshed in ONE run (DESIGN §9), as ``aperio refresh
--workers N`` does it, for an operator who wants "refresh everything now" from the launchpad or
``dagster job execute``. It registers every batch as a partition, and reports what it did as
materializations of the state assets: a partition of ``S/conversion_lineage`` and
``S/partition_status`` for each batch it processed, each schema's model and the view definitions.
A batch with a failed file is reported in the run's failure, not materialized (its partition keeps
its last good state); the run fails after doing all the others.

The sensor and backfills use the partitioned batch runs instead (``defs/partitions.py``): many
runs, in parallel, each retried alone.

(No ``from __future__ import annotations`` here: Dagster reads the annotations at runtime.)
"""

from collections.abc import Iterator

import dagster as dg

from aperio_assets.conversion.batches import schema_batches
from aperio_assets.conversion.refresh import SchemaRefresh, refresh
from aperio_assets.defs.assets import CATALOG_VIEWS, file_progress, lineage_key, model_key, status_key
from aperio_assets.defs.partitions import batches_partitions
from aperio_assets.defs.resources import AperioResource


class RefreshConfig(dg.Config):
    workers: int = 1  # conversion processes (aperio refresh --workers)


@dg.op(description="Refresh every schema of the lake and report the state assets it changed.")
def refresh_lake(context: dg.OpExecutionContext, aperio: AperioResource, config: RefreshConfig) -> Iterator:
    # (a generator: events are yielded as they are known, so that they stand even if the op then fails)
    lake = aperio.lake()
    results = refresh(lake, workers=max(1, config.workers), progress=file_progress)
    failed: dict[str, str] = {}
    processed = 0
    for result in results:
        batches = schema_batches(SchemaRefresh(lake, lake.schema(result.schema)))
        keys = {(b.table.name, b.batch): key for key, b in batches.items()}
        partitions = batches_partitions(result.schema)
        registered = set(context.instance.get_dynamic_partitions(partitions.name))
        new = [key for key in batches if key not in registered]
        if new:
            context.instance.add_dynamic_partitions(partitions.name, new)
        for outcome in result.batches:
            key = keys.get((outcome.table, outcome.batch))
            if key is None:
                continue  # removed
            if outcome.status == "failed":
                failed[f"{result.schema}:{key}"] = outcome.error or "failed"
            elif outcome.status == "processed":
                processed += 1
                for asset in (lineage_key(result.schema), status_key(result.schema)):
                    yield dg.AssetMaterialization(asset, partition=key, metadata={"rows": outcome.row_count or 0})
        yield dg.AssetMaterialization(
            model_key(result.schema), metadata={"model written": result.model_written, "tables": result.tables}
        )
    yield dg.AssetMaterialization(CATALOG_VIEWS)
    if failed:
        raise dg.Failure(
            description=f"{len(failed)} batch(es) failed; every other batch was refreshed",
            metadata={"failed batches": dg.MetadataValue.json(failed)},
        )
    yield dg.Output(processed, metadata={"batches processed": processed, "schemas": len(results)})


@dg.job(
    description="Refresh the whole lake in one run (as `aperio refresh`); the lake sensor's partitioned "
    "batch runs do the same work spread over many runs."
)
def aperio_refresh_job() -> None:
    refresh_lake()

"""aperio's state: the state-table protocol and the trackers built on it (DESIGN §5, §6).

Public entry points: :func:`open_tracker` (and, with the conversion issue, ``open_lineage``).
"""

from __future__ import annotations

from aperio_assets import layout
from aperio_assets.lake import ConfigLike, Lake, open_lake
from aperio_assets.state.duckdb_tracker import DuckDBPartitionStatusStore
from aperio_assets.state.keys import canonical_key
from aperio_assets.state.lineage import ConversionLineage, JsonLineage, ParquetLineage
from aperio_assets.state.parquet_tracker import ParquetPartitionStatusStore, open_state_table
from aperio_assets.state.table import CompactionResult, StateTable, TableStats
from aperio_assets.state.tables import CONVERSIONS
from aperio_assets.state.tracker import IncrementalTracker

__all__ = [
    "CompactionResult",
    "ConversionLineage",
    "DuckDBPartitionStatusStore",
    "IncrementalTracker",
    "ParquetPartitionStatusStore",
    "StateTable",
    "TableStats",
    "canonical_key",
    "open_lineage",
    "open_tracker",
]


def open_tracker(
    config_or_path: ConfigLike | Lake, schema: str, *, max_staleness_seconds: float = 0.0
) -> IncrementalTracker:
    """The tracker for ``schema``: shared (Parquet state tables) or local (legacy DuckDB file), as
    the schema's ``stateStorage`` says. In shared mode every read re-lists the state directory
    unless ``max_staleness_seconds`` allows a recent listing to be reused (one LIST per read adds up
    on S3 for a caller that reads in a loop)."""
    lake = open_lake(config_or_path)
    schema_config = lake.schema(schema)
    if schema_config.state_storage == "local":
        return DuckDBPartitionStatusStore(lake.local_state_path(schema, layout.LEGACY_PARTITION_STATUS))
    return ParquetPartitionStatusStore(
        lake.storage, schema, lake.config.compaction, max_staleness_seconds=max_staleness_seconds
    )


def open_lineage(config_or_path: ConfigLike | Lake, schema: str) -> ConversionLineage:
    """The schema's conversion lineage: the ``conversions`` state table (shared) or the legacy
    ``.conversions.json`` with its lock file (local)."""
    lake = open_lake(config_or_path)
    schema_config = lake.schema(schema)
    if schema_config.state_storage == "local":
        return JsonLineage(lake.local_state_path(schema, layout.LEGACY_CONVERSIONS))
    directory = lake.storage.aperio_path(schema, layout.CONVERSIONS)
    return ParquetLineage(open_state_table(lake.storage, directory, CONVERSIONS, lake.config.compaction))

"""aperio's state: the state-table protocol and the trackers built on it (DESIGN §5, §6).

Public entry points: :func:`open_tracker` (and, with the conversion issue, ``open_lineage``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aperio_assets import layout
from aperio_assets.lake import ConfigLike, Lake, open_lake
from aperio_assets.state.access import is_shared, schema_table
from aperio_assets.state.keys import canonical_key
from aperio_assets.state.lineage import ConversionLineage, JsonLineage, ParquetLineage
from aperio_assets.state.parquet_tracker import ParquetPartitionStatusStore
from aperio_assets.state.table import CompactionResult, StateTable, TableStats
from aperio_assets.state.tables import CONVERSIONS, PARTITION_STATUS, TABLE_COMPLETION
from aperio_assets.state.tracker import IncrementalTracker

if TYPE_CHECKING:
    from aperio_assets.state.duckdb_tracker import DuckDBPartitionStatusStore

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


def __getattr__(name: str) -> Any:
    # The legacy store is imported when first named: a shared-mode process never imports DuckDB for
    # its tracker (a fresh process's first lookup pays every import it makes).
    if name == "DuckDBPartitionStatusStore":
        from aperio_assets.state.duckdb_tracker import DuckDBPartitionStatusStore

        return DuckDBPartitionStatusStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_tracker(config_or_path: ConfigLike | Lake, schema: str) -> IncrementalTracker:
    """The tracker for ``schema``: shared (Parquet state tables) or local (legacy DuckDB file), as
    the schema's ``stateStorage`` says. In shared mode it works on the Lake's state tables
    (``state.access.schema_table``: one per directory per Lake, shared with the lineage, the IO
    manager and the catalog), and every read re-lists the state directory, then GETs only the files
    no user of that Lake has read yet."""
    lake = open_lake(config_or_path)
    if not is_shared(lake, schema):
        from aperio_assets.state.duckdb_tracker import DuckDBPartitionStatusStore

        return DuckDBPartitionStatusStore(lake.local_state_path(schema, layout.LEGACY_PARTITION_STATUS))
    return ParquetPartitionStatusStore.over(
        schema, schema_table(lake, schema, PARTITION_STATUS), schema_table(lake, schema, TABLE_COMPLETION)
    )


def open_lineage(config_or_path: ConfigLike | Lake, schema: str) -> ConversionLineage:
    """The schema's conversion lineage: the ``conversions`` state table (shared) or the legacy
    ``.conversions.json`` with its lock file (local)."""
    lake = open_lake(config_or_path)
    if not is_shared(lake, schema):
        return JsonLineage(lake.local_state_path(schema, layout.LEGACY_CONVERSIONS))
    return ParquetLineage(schema_table(lake, schema, CONVERSIONS))

"""The state of a local-mode schema, for the ``aperio.*`` views (DESIGN §7): read from its legacy
files (``.partition_status.duckdb``, ``conversions.json``) without holding their locks."""

from __future__ import annotations

import os

import pyarrow as pa

from aperio_assets import layout
from aperio_assets.config import SchemaConfig
from aperio_assets.lake import Lake
from aperio_assets.state.duckdb_tracker import DuckDBPartitionStatusStore
from aperio_assets.state.lineage import COLUMNS as LINEAGE_COLUMNS
from aperio_assets.state.lineage import JsonLineage
from aperio_assets.state.spec import TableSpec
from aperio_assets.state.tables import CONVERSIONS


def local_snapshot(lake: Lake, schema: SchemaConfig, spec: TableSpec) -> pa.Table | None:
    """A snapshot of a local-mode schema's rows of ``spec`` (its keys and values), or None when the
    schema has no such file yet."""
    arrow_schema = pa.schema([f for f in spec.schema if f.name in spec.keys or f.name in spec.value_names])
    if spec is CONVERSIONS:
        path = lake.local_state_path(schema.name, layout.LEGACY_CONVERSIONS)
        if not os.path.exists(path):
            return None
        rows = [{c: r.get(c) for c in LINEAGE_COLUMNS} for r in JsonLineage(path).records().values()]
    else:
        path = lake.local_state_path(schema.name, layout.LEGACY_PARTITION_STATUS)
        if not os.path.exists(path):
            return None
        rows = DuckDBPartitionStatusStore(path).all_rows(spec.name)
    return pa.Table.from_pylist(rows, schema=arrow_schema)

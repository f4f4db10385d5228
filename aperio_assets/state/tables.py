"""The state tables aperio keeps, all on the one protocol of ``state.table`` (DESIGN §5)."""

from __future__ import annotations

import pyarrow as pa

from aperio_assets import layout
from aperio_assets.state.spec import TableSpec

STRING, INT64, BOOL = pa.string(), pa.int64(), pa.bool_()

# The legacy partition_status columns (DESIGN §4), keyed by (alternate, canonical batch key).
PARTITION_STATUS = TableSpec(
    name=layout.PARTITION_STATUS,
    keys=("alternate_name", "incremental_key_values"),
    values=(
        ("source_table", STRING),
        ("target_pattern", STRING),
        ("processed_at", INT64),
        ("row_count", INT64),
        ("error_status", BOOL),
        ("error_message", STRING),
        ("phase", STRING),
    ),
)

TABLE_COMPLETION = TableSpec(
    name=layout.TABLE_COMPLETION,
    keys=("pipeline_name",),
    values=(
        ("signature", STRING),
        ("config_hash", STRING),
        ("row_count", INT64),
        ("source_file_watermark", INT64),
        ("completed_at", INT64),
    ),
)

# File-conversion lineage; ``extra`` keeps, as JSON, legacy record fields that have no column.
CONVERSIONS = TableSpec(
    name=layout.CONVERSIONS,
    keys=("source_path",),
    values=(
        ("target_path", STRING),
        ("source_modified", INT64),
        ("converted_at", INT64),
        ("conversion_type", STRING),
        ("row_count", INT64),
        ("source_size", INT64),
        ("source_etag", STRING),
        ("table_name", STRING),
        ("error", STRING),
        ("extra", STRING),
    ),
)

VIEWS = TableSpec(
    name="views",
    keys=("schema_name", "view_name"),
    values=(("sql", STRING), ("origin", STRING), ("columns", STRING)),
)

SCHEMA_TABLES = {spec.name: spec for spec in (PARTITION_STATUS, TABLE_COMPLETION, CONVERSIONS)}

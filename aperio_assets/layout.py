"""Names of everything aperio keeps under ``.aperio/`` (DESIGN §4), in one place."""

from __future__ import annotations

# Shared mode: state tables (directories of immutable Parquet files) per schema ...
PARTITION_STATUS = "partition_status"
TABLE_COMPLETION = "table_completion"
CONVERSIONS = "conversions"
SCHEMA_STATE_TABLES = (PARTITION_STATUS, TABLE_COMPLETION, CONVERSIONS)
# ... and at the root (schema None).
CATALOG_DIR = "catalog"
VIEWS = "catalog/views"
GENERATED_MODEL = "generated-model.json"
TABLES_DIR = "tables"
MIGRATIONS_DIR = "_migrations"
ARCHIVE_DIR = "_archive"
QUARANTINE_DIR = "_quarantine"
ROOT_ENTRIES = (CATALOG_DIR, MIGRATIONS_DIR, ARCHIVE_DIR, QUARANTINE_DIR)

# Local (legacy) mode.
LEGACY_CATALOG = ".duckdb/shared.duckdb"
LEGACY_PARTITION_STATUS = ".partition_status.duckdb"
LEGACY_CONVERSIONS = ".conversions.json"
LEGACY_CONVERSIONS_LOCK = ".conversions.json.lock"
LEGACY_GENERATED_MODEL = ".generated-model.json"
LEGACY_SCHEMA_FILES = (
    LEGACY_PARTITION_STATUS,
    f"{LEGACY_PARTITION_STATUS}.wal",
    LEGACY_CONVERSIONS,
    LEGACY_CONVERSIONS_LOCK,
    LEGACY_GENERATED_MODEL,
)
LEGACY_ROOT_FILES = (LEGACY_CATALOG, f"{LEGACY_CATALOG}.wal")

"""The legacy single-node formats (DESIGN §4), exactly: the local-mode store writes them, migration
and the demo's legacy state read and write them."""

from __future__ import annotations

PARTITION_STATUS_DDL = """\
CREATE TABLE partition_status (
  alternate_name VARCHAR NOT NULL,
  incremental_key_values VARCHAR NOT NULL,   -- JSON object of the batch key, e.g. '{"year":"2020"}' or '{}'
  source_table VARCHAR NOT NULL,
  target_pattern VARCHAR,
  processed_at BIGINT NOT NULL,              -- epoch milliseconds
  row_count INTEGER DEFAULT NULL,
  error_status BOOLEAN DEFAULT FALSE,
  error_message VARCHAR DEFAULT NULL,        -- truncated to 1000 characters
  phase VARCHAR DEFAULT NULL,
  PRIMARY KEY (alternate_name, incremental_key_values));"""

TABLE_COMPLETION_DDL = """\
CREATE TABLE table_completion (
  pipeline_name VARCHAR PRIMARY KEY, signature VARCHAR NOT NULL, config_hash VARCHAR,
  row_count BIGINT DEFAULT 0, source_file_watermark BIGINT DEFAULT 0, completed_at BIGINT NOT NULL);"""

# What old versions wrote: no row_count, error_status, error_message or phase, and no table_completion.
PARTITION_STATUS_DDL_OLD = """\
CREATE TABLE partition_status (
  alternate_name VARCHAR NOT NULL,
  incremental_key_values VARCHAR NOT NULL,
  source_table VARCHAR NOT NULL,
  target_pattern VARCHAR,
  processed_at BIGINT NOT NULL,
  PRIMARY KEY (alternate_name, incremental_key_values));"""

# Bringing an old file up to the current format, in place.
UPGRADE_STATEMENTS = (
    "ALTER TABLE partition_status ADD COLUMN IF NOT EXISTS row_count INTEGER DEFAULT NULL",
    "ALTER TABLE partition_status ADD COLUMN IF NOT EXISTS error_status BOOLEAN DEFAULT FALSE",
    "ALTER TABLE partition_status ADD COLUMN IF NOT EXISTS error_message VARCHAR DEFAULT NULL",
    "ALTER TABLE partition_status ADD COLUMN IF NOT EXISTS phase VARCHAR DEFAULT NULL",
)

PARTITION_STATUS_COLUMNS = (
    "alternate_name",
    "incremental_key_values",
    "source_table",
    "target_pattern",
    "processed_at",
    "row_count",
    "error_status",
    "error_message",
    "phase",
)
TABLE_COMPLETION_COLUMNS = (
    "pipeline_name",
    "signature",
    "config_hash",
    "row_count",
    "source_file_watermark",
    "completed_at",
)
ERROR_MESSAGE_LIMIT = 1000

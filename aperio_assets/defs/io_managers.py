"""``SharedParquetIOManager``: assets' Polars frames in and out of aperio's state tables.

An output frame is appended to the asset's state table through the one state IO of the library
(``state.access``): in shared mode as ONE new immutable Parquet file under the §5 protocol, in local
mode through the legacy stores. Rows with ``_deleted`` true are deletes (tombstones). An input is
the table's current, deduplicated state. Which table an asset owns is in its definition metadata
(``aperio/state_table``, ``aperio/schema``). UPathIOManager is not used: its ``storage_options``
do not work with the current universal_pathlib, and the protocol needs create-if-absent anyway.

(No ``from __future__ import annotations`` here: pydantic reads the nested resource's annotation.)
"""

from collections.abc import Mapping
from typing import Any

import dagster as dg
import polars as pl

from aperio_assets.defs.resources import AperioResource
from aperio_assets.state.access import StateAccess
from aperio_assets.state.frames import from_frame, rows_frame

SCHEMA_KEY = "aperio/schema"
TABLE_KEY = "aperio/state_table"


def state_table_metadata(schema: str | None, table: str) -> dict[str, str]:
    """Definition metadata that ties an asset to its state table."""
    return {TABLE_KEY: table, **({SCHEMA_KEY: schema} if schema is not None else {})}


def _value(metadata: Mapping[str, Any], key: str) -> str | None:
    value = metadata.get(key)
    return getattr(value, "value", value)  # raw or wrapped in a MetadataValue


class SharedParquetIOManager(dg.ConfigurableIOManager):
    """Appends Polars frames to state tables and loads their current state."""

    aperio: AperioResource

    def _state(self, metadata: Mapping[str, Any], asset: str) -> StateAccess:
        table = _value(metadata, TABLE_KEY)
        if table is None:
            raise dg.Failure(
                f"{asset} has no {TABLE_KEY!r} metadata: SharedParquetIOManager does not know "
                "which state table it writes"
            )
        return self.aperio.state(_value(metadata, SCHEMA_KEY), table)

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame) -> None:
        if not isinstance(obj, pl.DataFrame):
            raise dg.Failure(f"SharedParquetIOManager stores Polars DataFrames, got {type(obj).__name__}")
        state = self._state(context.definition_metadata, context.asset_key.to_user_string())
        upserts, deletes = from_frame(state.spec, obj)
        # An asset that recorded its rows as it went (conversion lineage) reports what it wrote, and
        # how many state files there were before it started, itself: no LIST for that here.
        reported = context.output_metadata or {}
        files_before = None if "state files before" in reported else state.file_count()
        state.apply(upserts, deletes)
        row_count, files_after = state.counts()  # one read after the write, for both
        metadata: dict[str, Any] = {
            "dagster/row_count": row_count,
            "state mode": state.mode,
            "rows written": len(upserts),
            "rows deleted": len(deletes),
        }
        if files_after is not None:
            if files_before is not None:
                metadata["state files before"] = files_before
            metadata["state files after"] = files_after
        context.add_output_metadata({k: v for k, v in metadata.items() if k not in reported})

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        upstream = context.upstream_output
        if upstream is None:
            raise dg.Failure("SharedParquetIOManager loads only asset outputs")
        state = self._state(upstream.definition_metadata, context.asset_key.to_user_string())
        return rows_frame(state.spec, state.rows())

"""State rows as Polars frames: what Dagster assets hand to the IO manager and get from it
(``_deleted`` true marks a delete). Kept apart from the dispatcher so the tracker path never
imports Polars."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl
import pyarrow as pa

from aperio_assets.state.arrow import empty_table
from aperio_assets.state.spec import DELETED, TableSpec

Row = dict[str, Any]
Key = tuple[str, ...]


def frame_schema(spec: TableSpec, *, with_deleted: bool = False) -> pl.Schema:
    arrow = pa.schema([pa.field(k, pa.string()) for k in spec.keys] + [pa.field(n, t) for n, t in spec.values])
    schema = pl.Schema(pl.from_arrow(empty_table(arrow)).schema)
    if with_deleted:
        schema[DELETED] = pl.Boolean
    return schema


def to_frame(spec: TableSpec, upserts: Sequence[Row] = (), deletes: Sequence[Key] = ()) -> pl.DataFrame:
    """Upserts and deletes as one frame; deletes are rows with ``_deleted`` true and only keys set."""
    columns = (*spec.keys, *spec.value_names)
    records = [{**{c: row.get(c) for c in columns}, DELETED: False} for row in upserts]
    records += [{**dict.fromkeys(columns), **dict(zip(spec.keys, key, strict=True)), DELETED: True} for key in deletes]
    return pl.DataFrame(records, schema=frame_schema(spec, with_deleted=True), orient="row")


def from_frame(spec: TableSpec, frame: pl.DataFrame) -> tuple[list[Row], list[Key]]:
    """A frame's upserts and deletes. It must hold the key columns; value columns it lacks are null,
    and a column the table does not have is an error (never dropped silently)."""
    allowed = {*spec.keys, *spec.value_names, DELETED}
    unknown = [c for c in frame.columns if c not in allowed]
    if unknown:
        raise ValueError(f"state table {spec.name} has no column(s) {', '.join(unknown)}")
    missing = [k for k in spec.keys if k not in frame.columns]
    if missing:
        raise ValueError(f"a frame for state table {spec.name} needs the key column(s) {', '.join(missing)}")
    upserts, deletes = [], []
    for row in frame.iter_rows(named=True):
        if row.pop(DELETED, False):
            deletes.append(tuple(row[k] for k in spec.keys))
        else:
            upserts.append({c: row.get(c) for c in (*spec.keys, *spec.value_names)})
    return upserts, deletes


def rows_frame(spec: TableSpec, rows: Sequence[Row]) -> pl.DataFrame:
    """Current rows as a frame with the table's columns and types (no ``_deleted``)."""
    columns = (*spec.keys, *spec.value_names)
    return pl.DataFrame([{c: r.get(c) for c in columns} for r in rows], schema=frame_schema(spec), orient="row")

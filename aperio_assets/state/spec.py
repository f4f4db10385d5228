"""A state table's columns: string key columns, typed value columns, and the protocol columns."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

TS, WRITER, DELETED = "_ts", "_writer", "_deleted"
PROTOCOL_FIELDS = (
    pa.field(TS, pa.int64(), nullable=False),
    pa.field(WRITER, pa.string(), nullable=False),
    pa.field(DELETED, pa.bool_(), nullable=False),
)


@dataclass(frozen=True)
class TableSpec:
    """``keys`` are string columns that identify a row; ``values`` are (name, Arrow type) pairs."""

    name: str
    keys: tuple[str, ...]
    values: tuple[tuple[str, pa.DataType], ...]

    @property
    def schema(self) -> pa.Schema:
        return pa.schema(
            [pa.field(k, pa.string(), nullable=False) for k in self.keys]
            + [pa.field(n, t) for n, t in self.values]
            + list(PROTOCOL_FIELDS)
        )

    @property
    def value_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.values)

    @property
    def required(self) -> tuple[str, ...]:
        return (*self.keys, TS, WRITER, DELETED)

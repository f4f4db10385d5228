"""The §5 read rule as DuckDB SQL: per key the row with the greatest ``(_ts, _writer)``, tombstones
hidden. The catalog exposes state tables through this query."""

from __future__ import annotations

from collections.abc import Sequence

from aperio_assets.sqlutil import quote_identifier, quote_literal
from aperio_assets.state.spec import DELETED, TS, WRITER, TableSpec


def current_state_sql(spec: TableSpec, files: Sequence[str] | str, *, include_deleted: bool = False) -> str:
    """A SELECT of the current state over ``files`` (a list of paths, or one glob).

    Superseded files that compaction keeps for its grace period change nothing (they hold versions
    the compacted file also holds). A list of the files a reader found readable
    (``StateTable.readable_files()``) keeps one corrupt file from breaking the query, and stays
    readable for the grace period whatever compaction does meanwhile.
    """
    source = quote_literal(files) if isinstance(files, str) else "[" + ", ".join(quote_literal(f) for f in files) + "]"
    keys = ", ".join(quote_identifier(k) for k in spec.keys)
    hidden = "" if include_deleted else f" AND NOT {DELETED}"
    ranked = (
        f"SELECT *, row_number() OVER (PARTITION BY {keys} ORDER BY {TS} DESC, {WRITER} DESC) "
        f"AS __rank FROM read_parquet({source}, union_by_name = true)"
    )
    return f"SELECT * EXCLUDE (__rank) FROM ({ranked}) WHERE __rank = 1{hidden}"

"""The §5 read rule as DuckDB SQL: per key the row with the greatest ``(_ts, _writer)``, tombstones
hidden. The catalog exposes state tables through this query."""

from __future__ import annotations

from collections.abc import Sequence

from aperio_assets.sqlutil import quote_identifier, quote_literal
from aperio_assets.state.spec import DELETED, TS, WRITER, TableSpec


def current_state_sql(spec: TableSpec, files: Sequence[str] | str, *, include_deleted: bool = False,
                      extra_columns: Sequence[tuple[str, str]] = ()) -> str:
    """A SELECT of the current state over ``files`` (a list of paths, or one glob).

    A list is safer than a glob: aperio passes the files its reader found readable, so one corrupt
    file cannot break the query. ``extra_columns`` adds constant columns (name, value), e.g. the
    schema name.
    """
    source = quote_literal(files) if isinstance(files, str) else "[" + ", ".join(quote_literal(f) for f in files) + "]"
    keys = ", ".join(quote_identifier(k) for k in spec.keys)
    constants = "".join(f", {quote_literal(value)} AS {quote_identifier(name)}"
                        for name, value in extra_columns)
    hidden = "" if include_deleted else f" AND NOT {DELETED}"
    ranked = (f"SELECT *, row_number() OVER (PARTITION BY {keys} ORDER BY {TS} DESC, {WRITER} DESC) "
              f"AS __rank FROM read_parquet({source}, union_by_name = true)")
    return f"SELECT * EXCLUDE (__rank){constants} FROM ({ranked}) WHERE __rank = 1{hidden}"

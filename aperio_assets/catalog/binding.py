"""Binding views (DESIGN §7): creating them in a DuckDB catalog, which reads their files' metadata
(on S3 a LIST and footer reads per view), and telling why one does not bind."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import duckdb

from aperio_assets.catalog.fingerprint import view_key
from aperio_assets.catalog.views import ViewDefinition
from aperio_assets.sqlutil import quote_identifier

RESOLVE_THREADS = 8  # views resolved at once (on S3 each is a LIST and a footer read: mostly waiting)


def first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _error_of(con: duckdb.DuckDBPyConnection, *statements: str) -> str | None:
    """Run ``statements`` on a cursor of their own; the first line of why one failed, or None."""
    cursor = con.cursor()
    try:
        for statement in statements:
            cursor.execute(statement)
        return None
    except duckdb.Error as exc:
        return first_line(exc)
    finally:
        cursor.close()


def bind_error(con: duckdb.DuckDBPyConnection, definition: ViewDefinition) -> str | None:
    """Why ``definition`` does not bind in ``con`` now (None if it does): bound as a temporary view,
    then dropped, so a read-only catalog can be asked too."""
    name = quote_identifier(f"__aperio_bind_{uuid.uuid4().hex}")
    return _error_of(con, f"CREATE TEMP VIEW {name} AS {definition.sql}", f"DROP VIEW temp.main.{name}")


def qualified_name(view: ViewDefinition) -> str:
    return f"{quote_identifier(view.schema_name)}.{quote_identifier(view.view_name)}"


def create_view(con: duckdb.DuckDBPyConnection, view: ViewDefinition) -> str | None:
    """Create (or replace) ``view`` in ``con``, binding it; returns why it did not bind, or None."""
    return _error_of(con, f"CREATE OR REPLACE VIEW {qualified_name(view)} AS {view.sql}")


def drop_view(con: duckdb.DuckDBPyConnection, view: ViewDefinition) -> None:
    con.execute(f"DROP VIEW IF EXISTS {qualified_name(view)}")


def _create_all(
    con: duckdb.DuckDBPyConnection, views: Sequence[ViewDefinition], workers: int
) -> list[tuple[ViewDefinition, str]]:
    """Create the views (in parallel when ``workers`` > 1); returns those that did not bind."""
    if workers > 1 and len(views) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            errors = list(pool.map(lambda v: create_view(con, v), views))
    else:
        errors = [create_view(con, v) for v in views]
    return [(v, e) for v, e in zip(views, errors, strict=True) if e is not None]


def bind_views(con: duckdb.DuckDBPyConnection, views: Sequence[ViewDefinition], *, workers: int) -> dict[str, str]:
    """Create every view of ``views``; returns ``schema.view`` → why, for those that did not bind.

    Generated views first (user views may read them), in parallel: each binds its own files. Then the
    others one by one, again while that helps: user views may read each other."""
    failed = _create_all(con, [v for v in views if v.origin == "generated"], workers)
    rest = [v for v in views if v.origin != "generated"]
    still: list[tuple[ViewDefinition, str]] = []
    for _ in range(len(rest) + 1):
        still = _create_all(con, rest, 1)
        if len(still) == len(rest):
            break
        rest = [v for v, _ in still]
    return {view_key(v): error for v, error in [*failed, *still]}


def _mentions(view: ViewDefinition, names: Iterable[str]) -> bool:
    """Whether ``view``'s SQL may read one of ``names`` (DuckDB identifiers are case-insensitive; a
    name holding a double quote is written with it doubled). Errs on the side of yes."""
    sql = view.sql.lower()
    return any(name in sql or name.replace('"', '""') in sql for name in names)


def readers_of(views: Sequence[ViewDefinition], changed: Iterable[str]) -> set[str]:
    """The keys (``schema.view``) of the non-generated views that read, directly or through each
    other, a view named in ``changed`` (view names): binding stored what those views' columns were,
    so they are bound again with the views they read. Generated views read only files."""
    names = {name.lower() for name in changed}
    found: set[str] = set()
    while names:
        more = [v for v in views if v.origin != "generated" and view_key(v) not in found and _mentions(v, names)]
        found.update(view_key(v) for v in more)
        names = {v.view_name.lower() for v in more}
    return found


def resolve_error(con: duckdb.DuckDBPyConnection, schema: str, view: str) -> str | None:
    """Why a view of the connection does not resolve now (None if it does). Binding it lists its
    files and reads their footers, and ``LIMIT 0`` keeps a user view's joins from running."""
    try:
        con.execute(f"SELECT * FROM {quote_identifier(schema)}.{quote_identifier(view)} LIMIT 0").fetchall()
        return None
    except duckdb.Error as exc:
        return first_line(exc)


def resolve_errors(
    con: duckdb.DuckDBPyConnection, names: Sequence[tuple[str, str]], *, independent: Collection[str] = ()
) -> dict[str, str]:
    """Why each view of ``names`` (``(schema, view)``) does not resolve now: ``schema.view`` → the
    first line of the error, for those that do not. The views whose keys are in ``independent``
    (generated views: they read their files only) are resolved in parallel, each on a cursor of its
    own on the connection's database; the others, which may read what only ``con`` has (the
    registered state snapshot) or each other, one by one on ``con``."""
    apart = [n for n in names if f"{n[0]}.{n[1]}" in independent]
    reasons: dict[tuple[str, str], str | None] = {}
    if apart:
        database = con.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]

        def on_a_cursor(name: tuple[str, str]) -> str | None:
            cursor = con.cursor()
            try:
                cursor.execute(f"USE {quote_identifier(database)}")  # (a cursor starts on the default database)
                return resolve_error(cursor, *name)
            finally:
                cursor.close()

        with ThreadPoolExecutor(max_workers=min(RESOLVE_THREADS, len(apart))) as pool:
            reasons.update(zip(apart, pool.map(on_a_cursor, apart), strict=True))
    reasons.update({n: resolve_error(con, *n) for n in names if n not in reasons})
    return {f"{schema}.{view}": reasons[(schema, view)] for schema, view in names if reasons[(schema, view)]}

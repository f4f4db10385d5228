"""`aperio views …` and `aperio sql`."""

from __future__ import annotations

import argparse
import csv
import json
import sys

from aperio_assets.cli.output import console, print_json
from aperio_assets.errors import UsageError
from aperio_assets.lake import open_lake


def register(commands: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    views = commands.add_parser("views", parents=[parent], help="view definitions of the catalog")
    actions = views.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", parents=[parent], help="every view definition").set_defaults(handler=run_list)
    actions.add_parser("rebuild", parents=[parent], help="regenerate the generated views from the models").set_defaults(
        handler=run_rebuild
    )
    add = actions.add_parser("add", parents=[parent], help='add or replace a user view: SCHEMA.NAME "SQL"')
    add.add_argument("name", metavar="SCHEMA.NAME")
    add.add_argument("sql", metavar="SQL")
    add.set_defaults(handler=run_add)
    drop = actions.add_parser("drop", parents=[parent], help="drop a view definition")
    drop.add_argument("name", metavar="SCHEMA.NAME")
    drop.set_defaults(handler=run_drop)

    sql = commands.add_parser("sql", parents=[parent], help="run a query against the catalog")
    sql.add_argument("query")
    sql.add_argument(
        "--format",
        choices=("table", "csv", "json"),
        default=None,
        help="output format (default: table; json with --json)",
    )
    sql.set_defaults(handler=run_sql)


def _split(name: str) -> tuple[str, str]:
    schema, dot, view = name.partition(".")
    if not dot or not schema or not view:
        raise UsageError(f"expected SCHEMA.NAME, got {name!r}")
    return schema, view


def _store(args: argparse.Namespace):
    from aperio_assets.catalog.views import ViewStore

    return ViewStore(open_lake(args.config))


def run_list(args: argparse.Namespace) -> int:
    views = _store(args).list()
    if args.json:
        print_json([{"schema": v.schema_name, "view": v.view_name, "origin": v.origin, "sql": v.sql} for v in views])
    else:
        for v in views:
            console.print(f"{v.schema_name}.{v.view_name}  [{v.origin}]  {v.sql}", markup=False)
    return 0


def run_rebuild(args: argparse.Namespace) -> int:
    rebuilt = _store(args).rebuild()
    summary = {
        "written": rebuilt.written,
        "removed": rebuilt.removed,
        "unchanged": rebuilt.unchanged,
        "shadowedByUserViews": rebuilt.shadowed_by_user_views,
        "views": rebuilt.views,
    }
    if args.json:
        print_json(summary)
    else:
        console.print(", ".join(f"{k}: {v}" for k, v in summary.items()))
    return 0


def run_add(args: argparse.Namespace) -> int:
    schema, name = _split(args.name)
    view = _store(args).add(schema, name, args.sql)
    if args.json:
        print_json({"schema": view.schema_name, "view": view.view_name, "origin": view.origin})
    else:
        console.print(f"view {schema}.{name} saved", markup=False)
    return 0


def run_drop(args: argparse.Namespace) -> int:
    schema, name = _split(args.name)
    dropped = _store(args).drop(schema, name)
    if not dropped:
        raise UsageError(f"no view {schema}.{name}")
    if args.json:
        print_json({"dropped": f"{schema}.{name}"})
    return 0


def run_sql(args: argparse.Namespace) -> int:
    import duckdb

    from aperio_assets.catalog import connect

    con = connect(args.config)
    try:
        relation = con.execute(args.query)
    except duckdb.Error as exc:
        raise UsageError(f"query failed: {str(exc).strip().splitlines()[0]}") from None
    columns = [d[0] for d in relation.description or []]
    rows = relation.fetchall()
    fmt = args.format or ("json" if args.json else "table")
    if fmt == "json":
        sys.stdout.write(json.dumps([dict(zip(columns, r, strict=True)) for r in rows], default=str, indent=2) + "\n")
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        from rich.table import Table

        table = Table(*columns)
        for r in rows:
            table.add_row(*("" if v is None else str(v) for v in r))
        console.print(table)
    return 0

"""`aperio migrate`."""

from __future__ import annotations

import argparse
import sys

from aperio_assets.cli.output import console, print_json
from aperio_assets.lake import open_lake


def register(commands: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("migrate", parents=[parent], help="move legacy local state into shared state")
    parser.add_argument("--schema", metavar="S", help="only this schema (default: all, and the legacy catalog)")
    parser.add_argument("--dry-run", action="store_true", help="print what would happen; write nothing")
    parser.add_argument(
        "--no-archive", action="store_true", help="leave the legacy files in place (a copy still goes to _archive/)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from aperio_assets.migration import migrate

    lake = open_lake(args.config)
    lake.check()
    with console.status("migrating legacy state…") as spinner:
        report = migrate(
            lake,
            args.schema,
            dry_run=args.dry_run,
            archive=not args.no_archive,
            progress=lambda message: spinner.update(message),
        )
    if args.json:
        print_json(report.to_dict())
    else:
        if not report.schemas:
            console.print("no legacy state to migrate")
        for schema in report.schemas:
            for kind in schema.kinds:
                console.print(
                    f"{schema.schema}: {kind.kind}: {kind.rows} rows {kind.status.replace('-', ' ')} "
                    f"from {kind.source}",
                    markup=False,
                )
            for note in schema.notes:
                console.print(f"{schema.schema}: {note}", markup=False)
            if schema.archived:
                console.print(f"{schema.schema}: backed up to {schema.archived[0].rsplit('/', 2)[0]}/", markup=False)
    for schema in report.failed:
        print(f"aperio: failed: {schema.schema}: {schema.error}", file=sys.stderr)
    return 1 if report.failed else 0

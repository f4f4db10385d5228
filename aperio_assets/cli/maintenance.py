"""`aperio compact` and `aperio doctor`."""

from __future__ import annotations

import argparse

from aperio_assets.cli.output import console, print_json
from aperio_assets.lake import open_lake
from aperio_assets.state.maintenance import compact_lake, doctor


def register(commands: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    compact = commands.add_parser("compact", parents=[parent], help="merge each shared state table's files into one")
    compact.add_argument("--schema", metavar="S", help="only this schema (default: all, and the catalog)")
    compact.set_defaults(handler=run_compact)
    check = commands.add_parser(
        "doctor", parents=[parent], help="find unreadable state files and other problems (exit 1 if any remain)"
    )
    check.add_argument(
        "--repair", action="store_true", help="quarantine unreadable files into _quarantine/ and compact crowded tables"
    )
    check.set_defaults(handler=run_doctor)


def run_compact(args: argparse.Namespace) -> int:
    lake = open_lake(args.config)
    lake.check()
    with console.status("compacting…"):
        results = compact_lake(lake, args.schema)
    if args.json:
        print_json(results)
        return 0
    for r in results:
        where = f"{r['schema'] or 'catalog'}/{r['table']}"
        if r["output"]:
            line = (
                f"{where}: {r['files_read']} files → 1, {r['rows_written']} rows, "
                f"{r['tombstones_dropped']} expired tombstones dropped"
            )
        else:
            line = f"{where}: nothing to compact ({r['files_read']} file(s))"
        if r["files_deleted"] or r["files_kept"]:
            line += f"; {r['files_deleted']} superseded file(s) deleted, {r['files_kept']} kept for the grace period"
        console.print(line)
    return 0


def run_doctor(args: argparse.Namespace) -> int:
    lake = open_lake(args.config)
    lake.check()
    report = doctor(lake, repair=args.repair)
    if args.json:
        print_json(report.to_dict())
    else:
        for problem in report.problems:
            where = f"{problem.schema or 'catalog'}/{problem.table}"
            state = f" — repaired: {problem.repair}" if problem.repaired else ""
            console.print(f"[red]problem[/red] {where}: {problem.kind}: {problem.path or ''} {problem.detail}{state}")
        for warning in report.warnings:
            console.print(f"[yellow]warning[/yellow] {warning}")
        if not report.problems:
            console.print("no problems found")
    return 1 if report.unrepaired else 0

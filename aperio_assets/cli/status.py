"""`aperio status`."""

from __future__ import annotations

import argparse

from aperio_assets.cli.output import console, human_bytes, print_json
from aperio_assets.lake import open_lake
from aperio_assets.status import lake_status


def register(commands: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("status", parents=[parent],
                                 help="configuration, schemas, modes and what exists under .aperio/")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    report = lake_status(open_lake(args.config))
    if args.json:
        print_json(report)
        return 0
    console.print(f"[bold]config[/bold]      {report['config']}")
    console.print(f"[bold]lake[/bold]        {report['baseDirectory']}")
    console.print(f"[bold].aperio[/bold]     {report['aperioDirectory']}"
                  + ("" if report["aperioDirectoryExists"] else "  (not created yet)"))
    console.print(f"[bold]storage[/bold]     {report['storage']}")
    console.print(f"[bold]mode[/bold]        {report['stateStorage']} (default)")
    if report["legacyCatalog"]:
        console.print(f"[bold]legacy catalog[/bold] {', '.join(report['legacyCatalog'])}")
    for name, summary in report["root"].items():
        console.print(f"[bold]{name}[/bold]  {summary['files']} files, {human_bytes(summary['bytes'])}")
    for schema in report["schemas"]:
        console.print(f"\n[bold]schema {schema['name']}[/bold]  ({schema['stateStorage']})  "
                      f"{schema['directory']}")
        console.print(f"  legacy state:  {', '.join(schema['legacyFiles']) or '-'}")
        for title, key in (("state tables", "stateTables"), ("other", "other")):
            entries = [f"{name} ({s['files']} files, {human_bytes(s['bytes'])})"
                       for name, s in schema[key].items()]
            console.print(f"  {title + ':':14s} {', '.join(entries) or '-'}")
    if not report["schemas"]:
        console.print("no schemas: add folders to the lake or list them under `schemas:`")
    return 0

"""`aperio status`."""

from __future__ import annotations

import argparse

from aperio_assets.cli.output import console, human_bytes, print_json
from aperio_assets.lake import open_lake
from aperio_assets.status import lake_status


def register(commands: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "status", parents=[parent], help="configuration, schemas, modes and what exists under .aperio/"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    report = lake_status(open_lake(args.config))
    if args.json:
        print_json(report)
        return 0
    console.print(f"[bold]config[/bold]      {report['config']}")
    console.print(f"[bold]lake[/bold]        {report['baseDirectory']}")
    console.print(
        f"[bold].aperio[/bold]     {report['aperioDirectory']}"
        + ("" if report["aperioDirectoryExists"] else "  (not created yet)")
    )
    console.print(f"[bold]storage[/bold]     {report['storage']}")
    console.print(f"[bold]mode[/bold]        {report['stateStorage']} (default)")
    if report["migrations"]:
        console.print(f"[bold]migrated[/bold]    {', '.join(report['migrations'])}")
    if report["legacyCatalog"]:
        console.print(f"[bold]legacy catalog[/bold] {', '.join(report['legacyCatalog'])}")
    for name, summary in report["root"].items():
        console.print(f"[bold]{name}[/bold]  {summary['files']} files, {human_bytes(summary['bytes'])}")
    _print_tables("catalog", report["catalogStateTables"])
    for schema in report["schemas"]:
        console.print(f"\n[bold]schema {schema['name']}[/bold]  ({schema['stateStorage']})  {schema['directory']}")
        console.print(f"  legacy state:     {', '.join(schema['legacyFiles']) or '-'}")
        _print_tables("", schema["stateTables"])
        other = [f"{name} ({s['files']} files, {human_bytes(s['bytes'])})" for name, s in schema["other"].items()]
        console.print(f"  other:            {', '.join(other) or '-'}")
    if not report["schemas"]:
        console.print("no schemas: add folders to the lake or list them under `schemas:`")
    return 0


def _print_tables(title: str, tables: dict) -> None:
    if title and tables:
        console.print(f"\n[bold]{title}[/bold]")
    for name, t in tables.items():
        unreadable = f", [red]{len(t['unreadableFiles'])} unreadable[/red]" if t["unreadableFiles"] else ""
        small = f"{t['smallFiles']} small" + (f" (limit {t['smallFileLimit']})" if t["smallFileLimit"] else "")
        console.print(
            f"  {name + ':':18s}{t['liveRows']} rows, {t['files']} files, {small}, "
            f"{human_bytes(t['bytes'])}{unreadable}"
        )

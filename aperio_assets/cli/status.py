"""`aperio status`."""

from __future__ import annotations

import argparse
from typing import Any

from aperio_assets.cli.output import console, human_bytes, print_json
from aperio_assets.lake import open_lake
from aperio_assets.state.maintenance import TableHealth
from aperio_assets.status import FilesSummary, LakeStatus, lake_status


def register(commands: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "status", parents=[parent], help="configuration, schemas, modes and what exists under .aperio/"
    )
    parser.set_defaults(handler=run)


def table_json(health: TableHealth) -> dict[str, Any]:
    stats = health.stats
    return {
        "liveRows": stats.live_rows,
        "tombstones": stats.tombstones,
        "files": stats.files,
        "smallFiles": stats.small_files,
        "smallFileLimit": health.small_file_limit,
        "bytes": stats.bytes,
        "supersededFiles": stats.superseded_files,
        "unreadableFiles": sorted(stats.bad_files),
    }


def _files_json(summary: FilesSummary) -> dict[str, int]:
    return {"files": summary.files, "bytes": summary.bytes}


def status_json(status: LakeStatus) -> dict[str, Any]:
    """``aperio status --json``: the report's shape (camelCase keys) is the CLI's."""
    report: dict[str, Any] = {
        "config": status.config,
        "baseDirectory": status.base_directory,
        "aperioDirectory": status.aperio_directory,
        "legacyDirectory": status.legacy_directory,
        "stateStorage": status.state_storage,
        "storage": status.storage,
    }
    if status.s3_endpoint is not None:
        report["s3"] = {"endpoint_url": status.s3_endpoint[0], "region": status.s3_endpoint[1]}
    report |= {
        "aperioDirectoryExists": status.aperio_directory_exists,
        "root": {name: _files_json(s) for name, s in status.root.items()},
        "legacyCatalog": status.legacy_catalog,
        "migrations": status.migrations,
        "catalogStateTables": {name: table_json(h) for name, h in status.catalog_state_tables.items()},
        "schemas": [
            {
                "name": schema.name,
                "directory": schema.directory,
                "stateStorage": schema.state_storage,
                "legacyFiles": schema.legacy_files,
                "stateTables": {name: table_json(h) for name, h in schema.state_tables.items()},
                "other": {name: _files_json(s) for name, s in schema.other.items()},
            }
            for schema in status.schemas
        ],
    }
    return report


def run(args: argparse.Namespace) -> int:
    report = status_json(lake_status(open_lake(args.config)))
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

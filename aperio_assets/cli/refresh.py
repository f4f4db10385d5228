"""`aperio refresh`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from aperio_assets.cli.output import console, print_json
from aperio_assets.lake import open_lake

if TYPE_CHECKING:
    from aperio_assets.conversion.refresh import RefreshResult


def register(commands: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "refresh", parents=[parent], help="convert new or changed raw files and process changed partitions"
    )
    parser.add_argument("--schema", metavar="S", help="only this schema (default: all)")
    parser.add_argument(
        "--workers",
        metavar="N",
        type=_positive,
        default=os.cpu_count() or 1,
        help="convert in N processes (default: the number of cores, %(default)s here)",
    )
    parser.set_defaults(handler=run)


FILE_STATES = ("converted", "skipped", "failed", "removed")
BATCH_STATES = ("processed", "skipped", "failed", "removed", "pending")


def summary(result: RefreshResult) -> dict[str, Any]:
    """One schema's refresh as `aperio refresh --json` prints it."""
    return {
        "schema": result.schema,
        "tables": result.tables,
        "files": {s: result.count("files", s) for s in FILE_STATES},
        "batches": {s: result.count("batches", s) for s in BATCH_STATES},
        "failures": [{"table": o.table, "source": o.source, "error": o.error} for o in result.failed_files],
        "ignoredFiles": result.ignored_files,
        "ignoredReasons": result.ignored_reasons,
        "modelWritten": result.model_written,
    }


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def run(args: argparse.Namespace) -> int:
    from aperio_assets.conversion.refresh import refresh

    lake = open_lake(args.config)
    lake.check()
    if sys.stderr.isatty() and not args.json:
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True
        ) as bar:
            task = bar.add_task("refreshing…", total=None)
            results = refresh(
                lake, args.schema, lambda message: bar.update(task, description=message), workers=args.workers
            )
    else:
        results = refresh(lake, args.schema, workers=args.workers)
    failures = [(r.schema, f) for r in results for f in r.failed_files]
    if args.json:
        print_json([summary(r) for r in results])
    else:
        for r in results:
            s = summary(r)
            files, batches = s["files"], s["batches"]
            console.print(
                f"{r.schema}: {r.tables} tables; files {files['converted']} converted, "
                f"{files['skipped']} skipped, {files['failed']} failed, {files['removed']} removed; "
                f"batches {batches['processed']} processed, {batches['skipped']} skipped, "
                f"{batches['failed']} failed"
            )
    for schema, failure in failures:
        print(f"aperio: failed: {schema}.{failure.table}: {failure.source}: {failure.error}", file=sys.stderr)
    return 1 if failures else 0

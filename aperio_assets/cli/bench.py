"""`aperio bench`: local mode against shared mode (SPEC §11)."""

from __future__ import annotations

import argparse
import os
import platform
import sys

from rich.table import Table

from aperio_assets.cli.output import console, print_json


def register(commands: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("bench", parents=[parent],
                                 help="measure local mode against shared mode, on local disk and a loopback S3")
    parser.add_argument("--quick", action="store_true", help="10k keys only, fewer repetitions")
    parser.add_argument("--storage", choices=("local", "s3"), action="append",
                        help="only this storage (repeatable; default: both)")
    parser.add_argument("--repetitions", type=int, metavar="N", help="interleaved repetitions per operation")
    parser.add_argument("--throughput", metavar="PNG",
                        help="instead: aggregate marks per second of 1, 2, 4, 8 writer processes on one state "
                             "table (shared mode on local disk and S3, the legacy store on local disk), "
                             "plotted into PNG")
    parser.add_argument("--marks", type=int, default=100, metavar="N",
                        help="marks per writer for --throughput (default: 100)")
    parser.set_defaults(handler=run)


def run_throughput(args: argparse.Namespace) -> int:
    from aperio_assets.bench.throughput import measure_throughput, plot

    if args.marks < 1:
        args.parser.error("--marks must be at least 1")
    with console.status("measuring throughput…") as status:
        rows = measure_throughput(args.marks, progress=lambda message: status.update(f"throughput: {message}"))
    plot(rows, args.throughput, f"aperio: marks/s over writers ({platform.node()}, {os.cpu_count()} cores, "
                                f"{args.marks} marks per writer)")
    if args.json:
        print_json([r.to_dict() for r in rows])
        return 0
    table = Table(title=f"writer throughput (plot: {args.throughput})")
    for column in ("series", "writers", "marks", "seconds", "marks/s"):
        table.add_column(column, justify="left" if column == "series" else "right")
    for r in rows:
        table.add_row(r.series, str(r.writers), str(r.marks), f"{r.seconds:.2f}", f"{r.marks_per_second:.0f}")
    console.print(table)
    return 0


def run(args: argparse.Namespace) -> int:
    from aperio_assets.bench.suite import STORAGES, run_bench

    if args.throughput:
        return run_throughput(args)
    if args.repetitions is not None and args.repetitions < 1:
        args.parser.error("--repetitions must be at least 1")
    storages = tuple(args.storage) if args.storage else STORAGES
    if args.json or not sys.stderr.isatty():
        rows = run_bench(quick=args.quick, storages=storages, repetitions=args.repetitions)
    else:
        with console.status("benchmarking…") as status:
            rows = run_bench(quick=args.quick, storages=storages, repetitions=args.repetitions,
                             progress=lambda message: status.update(f"benchmarking: {message}"))
    if args.json:
        print_json([r.to_dict() for r in rows])
        return 0
    table = Table(title=f"aperio bench ({platform.node()}, ratio = shared / local; medians)")
    for column in ("operation", "storage", "keys", "local ms", "shared ms", "ratio", "shared-mode requests"):
        table.add_column(column, justify="left" if column in ("operation", "storage", "shared-mode requests")
                         else "right")
    for r in rows:
        requests = " ".join(f"{k} {v}" for k, v in r.s3_requests.items())
        if r.detail:
            requests = (requests + " " if requests else "") + " ".join(f"({k} {v})" for k, v in r.detail.items())
        table.add_row(r.operation, r.storage, f"{r.keys:,}", f"{r.local_ms:.2f}", f"{r.shared_ms:.2f}",
                      f"{r.ratio:.2f}", requests)
    console.print(table)
    return 0

"""`aperio bench`: local mode against shared mode (DESIGN §11)."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Callable
from typing import Any

from rich.table import Table

from aperio_assets.cli.output import console, print_json


def register(commands: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "bench", parents=[parent], help="measure local mode against shared mode, on local disk and a loopback S3"
    )
    parser.add_argument("--quick", action="store_true", help="10k keys only, fewer repetitions")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every row and mode at a tiny size, one repetition; with --scale-out: no warm-up (for the "
        "test suite: its timings mean nothing)",
    )
    parser.add_argument(
        "--storage", choices=("local", "s3"), action="append", help="only this storage (repeatable; default: both)"
    )
    parser.add_argument(
        "--repetitions",
        type=int,
        metavar="N",
        help="interleaved repetitions per operation; with --scale-out: rounds of every worker count, "
        "interleaved, each run's speed-up over its own round's 1-worker run, then the medians (default: 1; "
        "--json rows carry their round, and the medians are rows whose round is null)",
    )
    parser.add_argument(
        "--throughput",
        metavar="PNG",
        help="instead: aggregate marks per second of 1, 2, 4, 8 writer processes on one state "
        "table (shared mode on local disk and S3, the legacy store on local disk), "
        "plotted into PNG",
    )
    parser.add_argument(
        "--marks", type=int, default=100, metavar="N", help="marks per writer for --throughput (default: 100)"
    )
    parser.add_argument(
        "--scale-out",
        metavar="PNG",
        help="instead: seconds of a full first refresh with 1, 2, 4, 8 workers, on local disk and "
        "on the loopback S3 with an injected per-request latency, plotted into PNG",
    )
    parser.add_argument(
        "--batches",
        type=int,
        default=1000,
        metavar="N",
        help="batches (one small CSV each) in the --scale-out lake (default: 1000)",
    )
    parser.add_argument(
        "--dagster-instance",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="where --scale-out's Dagster runs keep runs and events: a temporary SQLite instance "
        "(default) or PostgreSQL (a server from the pgserver wheel, as a deployment keeps them)",
    )
    parser.add_argument(
        "--worker-counts",
        default="1,2,4,8",
        metavar="LIST",
        help="worker counts for --scale-out, including 1 (default: 1,2,4,8)",
    )
    parser.add_argument(
        "--modes",
        default="cli,dagster",
        metavar="LIST",
        help="--scale-out modes: cli (refresh(lake, workers=N)) and/or dagster (refresh_with_runs) "
        "(default: cli,dagster)",
    )
    parser.add_argument(
        "--s3-latency",
        metavar="MS[,MS...]",
        help="delay added to every S3 request by a proxy, in ms: the main bench measures every S3 row at "
        "each value (default: 0); --scale-out and --lake-scale take one value (default: 20)",
    )
    parser.add_argument(
        "--lake-scale",
        metavar="PNG",
        help="instead: no-op refresh, status, catalog first/warm/after-a-change connect as the lake grows "
        "(local disk and S3 behind the latency proxy), checked against their targets, plotted into PNG",
    )
    parser.add_argument(
        "--lake-files",
        default="1000,10000,100000",
        metavar="LIST",
        help="raw files of the --lake-scale lakes on local disk (default: 1000,10000,100000)",
    )
    parser.add_argument(
        "--lake-s3-files",
        default="1000,10000",
        metavar="LIST",
        help="raw files of the --lake-scale lakes on S3; '' for none (default: 1000,10000)",
    )
    parser.set_defaults(handler=run)


def _with_progress(
    args: argparse.Namespace, measure: Callable[..., list[Any]], options: dict[str, Any], what: str, prefix: str
) -> list[Any]:
    """``measure(**options)``, showing its progress on a terminal (not with --json, nor when stderr
    is not one)."""
    if args.json or not sys.stderr.isatty():
        return measure(**options)
    with console.status(f"{what}…") as status:
        return measure(**options, progress=lambda message: status.update(f"{prefix}: {message}"))


def run_throughput(args: argparse.Namespace) -> int:
    from aperio_assets.bench.throughput import measure_throughput, plot

    if args.marks < 1:
        args.parser.error("--marks must be at least 1")
    with console.status("measuring throughput…") as status:
        rows = measure_throughput(args.marks, progress=lambda message: status.update(f"throughput: {message}"))
    plot(
        rows,
        args.throughput,
        f"aperio: marks/s over writers ({platform.node()}, {os.cpu_count()} cores, {args.marks} marks per writer)",
    )
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


def _list(args: argparse.Namespace, option: str, text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        args.parser.error(f"{option} must name at least one value")
    return items


def _latencies(args: argparse.Namespace, default: str, *, single: bool) -> list[float]:
    text = args.s3_latency if args.s3_latency is not None else default
    try:
        values = list(dict.fromkeys(float(v) for v in _list(args, "--s3-latency", text)))
    except ValueError:
        args.parser.error("--s3-latency must be a number of ms or a comma-separated list, e.g. 0,20")
    if any(v < 0 for v in values):
        args.parser.error("--s3-latency must not be negative")
    if single and len(values) != 1:
        args.parser.error("--s3-latency takes one value with --scale-out and --lake-scale")
    return values


def _counts(args: argparse.Namespace, option: str, text: str, *, empty: bool = False) -> list[int]:
    if empty and not text.strip():
        return []
    try:
        counts = [int(v) for v in _list(args, option, text)]
    except ValueError:
        args.parser.error(f"{option} must be a comma-separated list of numbers")
    if any(n < 10 for n in counts):
        args.parser.error(f"{option}: a lake needs at least 10 raw files")
    return counts


def run_scale_out(args: argparse.Namespace) -> int:
    from aperio_assets.bench.scaleout import MODES, STORAGES, ScaleOutRow, measure_scale_out, plot

    try:
        counts = sorted({int(w) for w in _list(args, "--worker-counts", args.worker_counts)})
    except ValueError:
        args.parser.error("--worker-counts must be a comma-separated list of numbers, e.g. 1,2,4,8")
    if counts[0] < 1 or 1 not in counts:
        args.parser.error("--worker-counts must be positive and include 1 (the speed-up's reference)")
    modes = list(dict.fromkeys(_list(args, "--modes", args.modes)))
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        args.parser.error(f"--modes: unknown mode(s) {', '.join(unknown)} (one of {', '.join(MODES)})")
    if args.batches < 1:
        args.parser.error("--batches must be at least 1")
    if args.repetitions is not None and args.repetitions < 1:
        args.parser.error("--repetitions must be at least 1")
    (latency,) = _latencies(args, "20", single=True)
    storages = list(dict.fromkeys(args.storage)) if args.storage else list(STORAGES)
    rounds = args.repetitions or 1
    measure = dict(
        batches=args.batches,
        worker_counts=counts,
        storages=storages,
        modes=modes,
        s3_latency_ms=latency,
        warm_up=not args.smoke,
        dagster_instance=args.dagster_instance,
        rounds=rounds,
    )
    rows = _with_progress(args, measure_scale_out, measure, "measuring scale-out", "scale-out")
    plot(
        rows,
        args.scale_out,
        f"aperio: full first refresh over workers ({platform.node()}, {os.cpu_count()} "
        f"cores, {args.batches:,} batches, S3 latency {latency:g} ms"
        + (f"; medians of {rounds} rounds, each round a dot)" if rounds > 1 else ")"),
    )
    measured_wrong = any(r.same_state is False for r in rows)
    if args.json:
        print_json([r.to_dict() for r in rows])
        return 1 if measured_wrong else 0
    table = Table(
        title=f"full first refresh over workers ({args.batches:,} batches, S3 latency "
        f"{latency:g} ms; plot: {args.scale_out})"
    )
    notes = any(r.note for r in rows)
    for column in (
        "storage",
        "mode",
        *(("round",) if rounds > 1 else ()),
        "workers",
        "seconds",
        "speed-up",
        "files",
        "batches",
        "same state",
        "S3 requests",
        *(("note",) if notes else ()),
    ):
        table.add_column(column, justify="left" if column in ("storage", "mode", "note") else "right")

    def shown(value: object, fmt: str = "{}") -> str:
        return "—" if value is None else fmt.format(value)

    def which_round(r: ScaleOutRow) -> tuple[str, ...]:
        """The round column's cell (none with one round): a summary row of the rounds says median."""
        if rounds == 1:
            return ()
        return ("median",) if r.round is None and r.workers is not None else (shown(r.round),)

    for r in rows:
        same = shown(r.same_state) if r.same_state is not False else "[bold red]False[/]"
        table.add_row(
            r.storage,
            r.mode,
            *which_round(r),
            shown(r.workers),
            shown(r.seconds, "{:.2f}"),
            shown(r.speedup, "{:.2f}x"),
            shown(r.files, "{:,}"),
            shown(r.batches, "{:,}"),
            same,
            shown(r.requests, "{:,}"),
            *((r.note or "",) if notes else ()),
        )
    console.print(table)
    if measured_wrong:
        print("aperio: bench: a run did not leave the 1-worker state (see same state / note)", file=sys.stderr)
    return 1 if measured_wrong else 0


def run_lake_scale(args: argparse.Namespace) -> int:
    from aperio_assets.bench.lakescale import measure_lake_scale, plot

    (latency,) = _latencies(args, "20", single=True)
    local = _counts(args, "--lake-files", args.lake_files, empty=True)
    s3 = _counts(args, "--lake-s3-files", args.lake_s3_files, empty=True)
    if args.storage:
        local = local if "local" in args.storage else []
        s3 = s3 if "s3" in args.storage else []
    if not local and not s3:
        args.parser.error("--lake-scale: no lake to measure (--lake-files and --lake-s3-files are empty)")
    measure = dict(local_files=local, s3_files=s3, s3_latency_ms=latency)
    rows = _with_progress(args, measure_lake_scale, measure, "measuring costs as the lake grows", "lake scale")
    plot(
        rows,
        args.lake_scale,
        f"aperio: costs as the lake grows ({platform.node()}, {os.cpu_count()} cores; S3: loopback behind "
        f"{latency:g} ms per request)",
    )
    if args.json:
        print_json([r.to_dict() for r in rows])
        return 0
    table = Table(title=f"costs as the lake grows (S3 latency {latency:g} ms; plot: {args.lake_scale})")
    for column in ("operation", "storage", "files", "tables", "seconds", "requests", "proxy", "target"):
        table.add_column(column, justify="right" if column in ("files", "tables", "seconds", "proxy") else "left")
    for r in rows:
        met = {True: "[green]met[/]", False: "[bold red]not met[/]", None: "—"}[r.target_met]
        table.add_row(
            r.operation,
            r.storage,
            f"{r.files:,}",
            str(r.tables),
            f"{r.seconds:.3f}",
            " ".join(f"{k} {v}" for k, v in r.requests.items())
            + (f" (GET raw {r.raw_gets}, converted {r.converted_gets})" if r.raw_gets is not None else ""),
            "—" if r.proxy_requests is None else f"{r.proxy_requests:,}",
            f"{met}: {r.verdict}" if r.target else "",
        )
    console.print(table)
    return 0


def run(args: argparse.Namespace) -> int:
    from aperio_assets.bench.suite import STORAGES, run_bench

    if args.throughput:
        return run_throughput(args)
    if args.scale_out:
        return run_scale_out(args)
    if args.lake_scale:
        return run_lake_scale(args)
    if args.repetitions is not None and args.repetitions < 1:
        args.parser.error("--repetitions must be at least 1")
    latencies = tuple(_latencies(args, "0", single=False))
    storages = tuple(args.storage) if args.storage else STORAGES
    options = dict(
        quick=args.quick, smoke=args.smoke, storages=storages, repetitions=args.repetitions, s3_latencies=latencies
    )
    rows = _with_progress(args, run_bench, options, "benchmarking", "benchmarking")
    if args.json:
        print_json([r.to_dict() for r in rows])
        return 0
    table = Table(title=f"aperio bench ({platform.node()}, ratio = shared / local; medians)")
    columns = ("operation", "storage", "keys", "local ms", "shared ms", "ratio", "shared-mode requests", "minimum")
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("operation", "storage", "shared-mode requests", "minimum") else "right"
        )
    for r in rows:
        requests = " ".join(f"{k} {v}" for k, v in r.s3_requests.items())
        if r.proxy_requests is not None:
            requests += f" [proxy saw {r.proxy_requests}]"
        if r.detail:
            requests = (requests + " " if requests else "") + " ".join(f"({k} {v})" for k, v in r.detail.items())
        minimum = ""
        if r.min_requests:
            shown = " ".join(f"{k} {v}" for k, v in r.min_requests.items())
            minimum = f"{shown}: met" if r.min_met else f"{shown}: [bold red]+{r.requests_over_min}[/]"
        storage = r.storage if r.s3_latency_ms is None else f"{r.storage} {r.s3_latency_ms:g} ms"
        table.add_row(
            r.operation,
            storage,
            f"{r.keys:,}",
            f"{r.local_ms:.2f}",
            f"{r.shared_ms:.2f}",
            f"{r.ratio:.2f}",
            requests,
            minimum,
        )
    console.print(table)
    return 0

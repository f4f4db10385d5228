"""Scale-out over workers: seconds of a full FIRST refresh of one lake as workers are added.

The lake is one schema, ``bench``: a Hive table ``events/day=NNNN/part.csv`` and, one in twenty
batches, small top-level tables ``tNNN.csv``; every batch is one CSV of a few rows, so a lake of
``batches`` batches holds ``batches`` files. Each measurement gets a lake of its own, generated
before the clock starts (a new directory on local disk, a new bucket in the loopback S3), so every
run converts everything.

Storages: ``local`` (this machine's disk) and ``s3``: the loopback S3 server (moto, its own process)
behind a :class:`~aperio_assets.bench.faultproxy.FaultProxy` (also its own process, so that neither
shares the bench's interpreter lock) that delays every request by ``s3_latency_ms``, as real S3's
10-30 ms would. The raw files are written straight into moto (generation is not slowed); the
refresh goes through the proxy, which counts its requests. The proxy's sockets send without Nagle's
delay (see :func:`_serve_proxy`): with it, every GET and LIST would wait ~40 ms more than asked for.
Before each storage and mode's runs, a two-file lake is refreshed untimed the same way, so that the
1-worker run does not pay this process's first imports. Worker processes always pay theirs: before
each run the fork server that an earlier run started is stopped, so every run starts its own.

Modes: ``cli`` is the library call behind ``aperio refresh --workers N``
(``refresh(lake, workers=N)``, in this process); ``dagster`` is
``aperio_assets.defs.launch.refresh_with_runs(config_path, workers)``, imported when needed: when
it cannot be imported, the series is reported as "not available: <reason>" and the rest goes on.
(Its runs go into a temporary instance of their own, never into ``$DAGSTER_HOME``'s.)

After each run the state is compared with the first 1-worker run's on the same storage: the
lineage and partition status rows, with time columns and the lake's own location left out. A run
also fails the comparison when a row is duplicated, when a table holds another number of rows than
the lake has files or batches, or when a file failed. Nothing is hidden: the row says
``same_state`` False and ``note`` says why; a run that raised is a row with the error.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import statistics
import tempfile
import textwrap
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from aperio_assets.bench.pginstance import InstanceFactory, PostgresUnavailable, instance_factory
from aperio_assets.bench.s3server import loopback_s3
from aperio_assets.processes import fork_server_running, stop_fork_server

STORAGES = ("local", "s3")
MODES = ("cli", "dagster")
WORKERS = (1, 2, 4, 8)
SCHEMA = "bench"
TABLE_EVERY = 20  # one batch in this many is a top-level table (50 of 1,000)
# Left out of the comparison: when things happened, not what they are.
TIME_COLUMNS = frozenset({"converted_at", "processed_at", "updated_at", "source_modified"})


@dataclass
class ScaleOutRow:
    storage: str
    mode: str
    workers: int | None
    seconds: float | None
    speedup: float | None  # the 1-worker run's seconds / this run's, same storage and mode
    files: int | None  # files converted
    batches: int | None  # batches processed
    same_state: bool | None  # None: not measured (a series not available)
    requests: int | None = None  # requests the refresh sent to S3 (through the proxy); None on local disk
    note: str | None = None  # why a run is not the same state, failed, or a series is not available
    round: int | None = None  # which round of --repetitions (1, 2, ...); None: a summary of the rounds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the lake ------------------------------------------------------------------------------------
def lake_files(batches: int) -> dict[str, bytes]:
    """The raw files of a lake of ``batches`` batches (one file each), by path under the base."""
    tables = batches // TABLE_EVERY
    files: dict[str, bytes] = {}
    for day in range(batches - tables):
        files[f"{SCHEMA}/events/day={day:04d}/part.csv"] = (
            f"id,day,value\n{day}1,{day},a\n{day}2,{day},b\n{day}3,{day},c\n".encode()
        )
    for t in range(tables):
        files[f"{SCHEMA}/t{t:03d}.csv"] = f"id,name\n1,t{t}\n2,u{t}\n".encode()
    return files


@dataclass
class _Place:
    """One run's lake: its config file, and how to read its state without the injected latency."""

    config_path: str
    base: str
    direct_s3_endpoint: str | None = None  # moto itself, for reading the state back


def _write_config(path: Path, base: str, endpoint: str | None) -> None:
    text = f"baseDirectory: {json.dumps(base)}\n"
    if endpoint:
        text += f"storage:\n  s3:\n    endpoint_url: {json.dumps(endpoint)}\n"
    path.write_text(text, encoding="utf-8")


def _generate_local(tmp: Path, name: str, files: dict[str, bytes]) -> _Place:
    base = tmp / name / "lake"
    for relative, data in files.items():
        target = base / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    config = tmp / name / "aperio.yaml"
    _write_config(config, str(base), None)
    return _Place(str(config), str(base))


def _generate_s3(tmp: Path, name: str, files: dict[str, bytes], moto: str, proxy: str) -> _Place:
    import boto3

    bucket = f"aperio-scaleout-{uuid.uuid4().hex[:12]}"  # a new bucket: no earlier run's keys to list past
    client = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    with ThreadPoolExecutor(max_workers=16) as pool:  # straight into moto, not through the proxy
        list(
            pool.map(lambda item: client.put_object(Bucket=bucket, Key=f"lake/{item[0]}", Body=item[1]), files.items())
        )
    (tmp / name).mkdir(parents=True, exist_ok=True)
    config = tmp / name / "aperio.yaml"
    _write_config(config, f"s3://{bucket}/lake", proxy)
    return _Place(str(config), f"s3://{bucket}/lake", moto)


# -- the latency proxy, in its own process --------------------------------------------------------
def _serve_proxy(upstream: str, latency_ms: float, conn: Any) -> None:
    from aperio_assets.bench.faultproxy import FaultProxy

    proxy = FaultProxy(upstream, seed=0)
    # Send each answer without waiting: FaultProxy writes an answer's headers and body in two
    # writes, and with Nagle's algorithm on, the body waits for the client's delayed ACK of the
    # headers (~40 ms on Linux) on every GET and LIST: that, not `latency_ms`, would be most of the
    # added latency (measured: GET 50 ms through the proxy with no latency set, 5 ms without Nagle).
    proxy._server.RequestHandlerClass.disable_nagle_algorithm = True
    if latency_ms > 0:
        proxy.set_faults(latency=1.0, latency_ms=latency_ms)
    proxy.start()
    conn.send(proxy.url)
    try:
        while conn.recv() == "counts":
            conn.send(proxy.counts())
    except EOFError:
        pass
    finally:
        proxy.stop()


@dataclass
class _ProxyHandle:
    url: str
    conn: Any

    def requests(self) -> int:
        self.conn.send("counts")
        return int(self.conn.recv().get("requests", 0))


@contextlib.contextmanager
def latency_proxy(upstream: str, latency_ms: float) -> Iterator[_ProxyHandle]:
    """A FaultProxy delaying every request by ``latency_ms``, in a spawned process."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_serve_proxy, args=(upstream, latency_ms, theirs), daemon=True)
    process.start()
    try:
        deadline = time.monotonic() + 60
        while not ours.poll(0.1):
            if not process.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the latency proxy did not start (exit code {process.exitcode})")
        yield _ProxyHandle(ours.recv(), ours)
    finally:
        with contextlib.suppress(OSError):
            ours.send("stop")
        process.join(timeout=10)
        if process.is_alive():
            process.terminate()
            process.join(timeout=10)


# -- one run ---------------------------------------------------------------------------------------
def _run_cli(config_path: str, workers: int) -> tuple[int, int]:
    from aperio_assets.conversion.refresh import refresh
    from aperio_assets.lake import open_lake

    results = refresh(open_lake(config_path), workers=workers)
    return (sum(r.count("files", "converted") for r in results), sum(r.count("batches", "processed") for r in results))


def _dagster_call(instances: InstanceFactory) -> tuple[Callable[[str, int], object] | None, str | None]:
    """``refresh_with_runs`` on a new instance of ``instances`` per run, or None and why it is not
    available."""
    try:
        from aperio_assets.defs.launch import refresh_with_runs
    except Exception as exc:  # ImportError, or the module failing while it loads
        return None, f"{type(exc).__name__}: {exc}"

    def call(config_path: str, workers: int) -> _Timed:
        with instances.instance() as instance:  # never the user's $DAGSTER_HOME
            # Timed from here: the refresh, not the making of an empty instance (a PostgreSQL
            # database and Dagster's tables, ~0.35 s), which a deployment has already
            started = time.perf_counter()
            result = refresh_with_runs(config_path, workers, instance=instance)
            return _Timed(result, time.perf_counter() - started)

    return call, None


@dataclass
class _Timed:
    """What a call did and how long the part of it that is measured took."""

    result: object
    seconds: float


@dataclass
class _State:
    lineage: list[str]
    status: list[str]
    problems: list[str]


def read_state(place: _Place, files: int, batches: int) -> _State:
    """The run's lineage and status rows, normalized for comparison, and what is wrong with them."""
    from aperio_assets import layout
    from aperio_assets.config import S3Settings
    from aperio_assets.conversion.naming import escape_glob
    from aperio_assets.lake import open_lake
    from aperio_assets.state.access import open_state

    lake = open_lake(place.config_path)
    if place.direct_s3_endpoint:  # read back from moto itself: no latency, no requests counted
        lake = type(lake)(replace(lake.config, s3=S3Settings(endpoint_url=place.direct_s3_endpoint)))
    config = lake.config
    places = [
        (config.aperio_directory, "<aperio>"),
        (escape_glob(config.aperio_directory), "<aperio>"),
        (config.base_directory, "<base>"),
        (escape_glob(config.base_directory), "<base>"),
    ]

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            for location, placeholder in places:
                value = value.replace(location, placeholder)
        return value

    problems: list[str] = []
    tables: dict[str, list[str]] = {}
    for name, expected in ((layout.CONVERSIONS, files), (layout.PARTITION_STATUS, batches)):
        access = open_state(lake, SCHEMA, name)
        rows = access.rows()
        keys = [access.key(r) for r in rows]
        if len(set(keys)) != len(keys):
            problems.append(f"{name}: {len(keys) - len(set(keys))} duplicated key(s)")
        if len(rows) != expected:
            problems.append(f"{name}: {len(rows)} rows for {expected}")
        failed = sum(1 for r in rows if r.get("error") or r.get("error_status"))
        if failed:
            problems.append(f"{name}: {failed} row(s) with an error")
        tables[name] = sorted(
            json.dumps({k: clean(v) for k, v in r.items() if k not in TIME_COLUMNS}, sort_keys=True, default=str)
            for r in rows
        )
    return _State(tables[layout.CONVERSIONS], tables[layout.PARTITION_STATUS], problems)


def compare(state: _State, baseline: _State | None) -> tuple[bool, str | None]:
    """Whether ``state`` is what ``baseline`` (the 1-worker run's) is, and if not, why."""
    problems = list(state.problems)
    if baseline is None:
        problems.append("no 1-worker state to compare with")
    else:
        for name, got, expected in (
            ("lineage", state.lineage, baseline.lineage),
            ("status", state.status, baseline.status),
        ):
            if got != expected:
                extra, missing = len(set(got) - set(expected)), len(set(expected) - set(got))
                problems.append(f"{name}: {extra} row(s) not in the 1-worker state, {missing} missing")
    return not problems, "; ".join(problems) or None


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 300 else text[:297] + "..."


# -- the whole measurement --------------------------------------------------------------------------
def measure_scale_out(
    batches: int = 1000,
    worker_counts: Sequence[int] = WORKERS,
    storages: Sequence[str] = STORAGES,
    modes: Sequence[str] = MODES,
    s3_latency_ms: float = 20.0,
    progress: Callable[[str], None] | None = None,
    warm_up: bool = True,
    dagster_instance: str = "sqlite",
    rounds: int = 1,
) -> list[ScaleOutRow]:
    """One row per storage, mode, worker count and round, then (more than one round) the medians
    (a series not available: one row saying why).
    ``warm_up=False`` (the smoke size, for the test suite) skips the untimed warm-up refreshes: every
    row and check is still made, but the 1-worker times then include this process's first imports.
    ``dagster_instance``: where the Dagster runs keep their runs and events, ``sqlite`` (Dagster's
    default) or ``postgres`` (a PostgreSQL server from the ``pgserver`` wheel, as a deployment).
    ``rounds``: each worker count measured that many times, the counts interleaved (1, 2, 4, 8, then
    8, 4, 2, 1, ...): each row's speed-up is over its own round's 1-worker run, and a summary row per
    count (``round`` None) gives the medians. This machine's speed drifts by 10-30% within an hour:
    series of one 1-worker and one 4-worker run gave 2.83x to 3.97x on the same code in an hour."""
    note = progress or (lambda message: None)
    counts = sorted(set(worker_counts))
    if not counts or counts[0] < 1 or 1 not in counts:
        raise ValueError("worker counts must be positive and include 1 (the speed-up's reference)")
    if batches < 1:
        raise ValueError("batches must be at least 1")
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    files = lake_files(batches)
    rows: list[ScaleOutRow] = []
    with tempfile.TemporaryDirectory(prefix="aperio-scaleout-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        calls: dict[str, Callable[[str, int], Any]] = {}
        unavailable: dict[str, str] = {}
        for mode in modes:
            if mode == "cli":
                calls[mode] = _run_cli
            elif mode == "dagster":
                try:
                    instances = stack.enter_context(instance_factory(dagster_instance, tmp))
                except PostgresUnavailable as exc:
                    unavailable[mode] = f"not available: {exc}"
                    continue
                call, reason = _dagster_call(instances)
                if call is None:
                    unavailable[mode] = f"not available: {reason}"
                else:
                    calls[mode] = call
            else:
                raise ValueError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
        endpoint = proxy = None
        if "s3" in storages:
            endpoint = stack.enter_context(loopback_s3())
            proxy = stack.enter_context(latency_proxy(endpoint.endpoint_url, s3_latency_ms))
        for storage in storages:
            if storage not in STORAGES:
                raise ValueError(f"unknown storage {storage!r} (one of {', '.join(STORAGES)})")
            baseline: _State | None = None
            for mode in modes:
                if mode in unavailable:
                    rows.append(ScaleOutRow(storage, mode, None, None, None, None, None, None, note=unavailable[mode]))
                    continue
                # untimed: this process's first refresh imports what it uses (Polars, DuckDB, the S3
                # client, Dagster); that must not count against the 1-worker run (spawned workers pay
                # theirs in every run). A warm-up that fails is not hidden: the runs fail the same way.
                if warm_up:
                    note(f"{storage}, {mode}: warming up")
                    warm = (
                        _generate_s3(tmp, f"{storage}-{mode}-warm-up", lake_files(2), endpoint.endpoint_url, proxy.url)
                        if storage == "s3" and endpoint is not None and proxy is not None
                        else _generate_local(tmp, f"{storage}-{mode}-warm-up", lake_files(2))
                    )
                    with contextlib.suppress(Exception):
                        calls[mode](warm.config_path, 1)
                measured: list[ScaleOutRow] = []
                for round_ in range(1, rounds + 1):
                    # (every other round in reverse order: a machine that drifts faster or slower
                    # over a round favours neither end of the worker counts)
                    order = counts if round_ % 2 else counts[::-1]
                    for n in order:
                        row, state = _measure_one(
                            calls[mode], storage, mode, n, files, tmp, endpoint, proxy, baseline, round_, note
                        )
                        if baseline is None and n == 1 and state is not None:
                            baseline = state
                        measured.append(row)
                rows += _with_speedups(measured, counts, rounds)
    return rows


def _measure_one(
    call: Callable[[str, int], Any],
    storage: str,
    mode: str,
    n: int,
    files: dict[str, bytes],
    tmp: Path,
    endpoint: Any,
    proxy: Any,
    baseline: _State | None,
    round_: int,
    note: Callable[[str], None],
) -> tuple[ScaleOutRow, _State | None]:
    """One refresh of a new lake with ``n`` workers: its row (no speed-up yet) and its state.
    Its workers start as a command run afresh starts them: the fork server an earlier row left
    running (and its imports, ~1.5 s of CPU here) is stopped first, so that no row inherits it."""
    cold = stop_fork_server() or not fork_server_running()
    note(f"{storage}, {mode}, {n} worker(s), round {round_}: generating {len(files):,} files")
    name = f"{storage}-{mode}-{n}-{round_}"
    if storage == "s3":
        assert endpoint is not None and proxy is not None
        place = _generate_s3(tmp, name, files, endpoint.endpoint_url, proxy.url)
    else:
        place = _generate_local(tmp, name, files)
    note(f"{storage}, {mode}, {n} worker(s), round {round_}: refreshing")
    before = proxy.requests() if storage == "s3" and proxy is not None else None
    started = time.perf_counter()
    try:
        counted = call(place.config_path, n)
    except Exception as exc:  # reported, never hidden; the other runs go on
        traceback.print_exc()
        return ScaleOutRow(
            storage, mode, n, None, None, None, None, False, note=f"failed: {_short(exc)}", round=round_
        ), None
    seconds = time.perf_counter() - started
    if isinstance(counted, _Timed):
        counted, seconds = counted.result, counted.seconds
    requests = proxy.requests() - before if before is not None and proxy is not None else None
    note(f"{storage}, {mode}, {n} worker(s), round {round_}: checking the state")
    try:
        state = read_state(place, len(files), len(files))
    except Exception as exc:  # a state that cannot be read back is a mismatch, shown
        traceback.print_exc()
        return (
            ScaleOutRow(
                storage,
                mode,
                n,
                round(seconds, 3),
                None,
                None,
                None,
                False,
                requests,
                note=f"state not readable: {_short(exc)}",
                round=round_,
            ),
            None,
        )
    # (the first 1-worker run is the baseline: compared with itself, only its own problems count)
    same, why = compare(state, state if baseline is None and n == 1 else baseline)
    if isinstance(counted, tuple):  # the library call says what it did
        converted, processed = counted
    else:  # refresh_with_runs: what the state holds
        converted, processed = len(state.lineage), len(state.status)
        failed_runs = getattr(counted, "failed", None)  # its LaunchResult, if it returns one
        if failed_runs:
            same = False
            why = _joined(why, f"{len(failed_runs)} Dagster run(s) failed")
    if (converted, processed) != (len(files), len(files)):
        same = False
        why = _joined(why, f"the refresh converted {converted} files and processed {processed} batches of {len(files)}")
    if not cold:  # (said, not hidden: its workers started from an earlier run's fork server)
        why = _joined(why, "an earlier run's worker was still running: its fork server was kept")
    row = ScaleOutRow(storage, mode, n, round(seconds, 3), None, converted, processed, same, requests, why, round_)
    return row, state


def _joined(*notes: str | None) -> str | None:
    """The notes that say something, one after the other (None if none does)."""
    return "; ".join(n for n in notes if n) or None


def _with_speedups(measured: list[ScaleOutRow], counts: Sequence[int], rounds: int) -> list[ScaleOutRow]:
    """``measured`` with each row's speed-up over its own round's 1-worker run (the two ran minutes
    apart, not a whole series apart), then, with more than one round, one summary row per worker
    count: the median seconds and the median of the rounds' speed-ups (``round`` None)."""
    # (a 1-worker run whose state could not be read is no reference: it may not have done it all)
    reference = {r.round: r.seconds for r in measured if r.workers == 1 and r.seconds and r.files is not None}
    for r in measured:
        base = reference.get(r.round)
        r.speedup = round(base / r.seconds, 2) if base and r.seconds else None
    if rounds == 1:
        return measured
    summaries: list[ScaleOutRow] = []
    for n in counts:
        mine = [r for r in measured if r.workers == n]
        timed = [r for r in mine if r.seconds is not None]
        speedups = sorted(r.speedup for r in mine if r.speedup is not None)
        failed = len(mine) - len(timed)
        counted = [r for r in timed if r.files is not None] or mine
        first = counted[0]
        summaries.append(
            ScaleOutRow(
                first.storage,
                first.mode,
                n,
                round(statistics.median(r.seconds for r in timed), 3) if timed else None,
                round(statistics.median(speedups), 2) if speedups else None,
                first.files if all(r.files == first.files for r in counted) else None,
                first.batches if all(r.batches == first.batches for r in counted) else None,
                all(r.same_state for r in mine),
                round(statistics.median(r.requests for r in timed if r.requests is not None))
                if any(r.requests is not None for r in timed)
                else None,
                _joined(
                    f"median of {len(timed)} round(s)"
                    + (f", speed-ups {speedups[0]:.2f}-{speedups[-1]:.2f}" if speedups else ""),
                    f"{failed} round(s) failed" if failed else None,
                ),
                None,
            )
        )
    return measured + summaries


def plot(rows: list[ScaleOutRow], path: str | os.PathLike[str], title: str) -> None:
    """Seconds (left) and speed-up (right) over workers, one line per storage and mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if r.workers is not None and r.seconds is not None]
    workers = sorted({r.workers for r in measured if r.workers is not None}) or [1]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for series in dict.fromkeys((r.storage, r.mode) for r in measured):
        points = [r for r in measured if (r.storage, r.mode) == series]
        label = f"{series[0]}/{series[1]}"
        # With several rounds: a line through the medians, each round's run a dot of the same colour
        medians = [r for r in points if r.round is None]
        line = medians or sorted(points, key=lambda r: r.workers or 0)
        (drawn,) = left.plot([r.workers for r in line], [r.seconds for r in line], marker="o", label=label)
        speed = [r for r in line if r.speedup is not None]
        right.plot([r.workers for r in speed], [r.speedup for r in speed], marker="o", label=label)
        if medians:
            each = [r for r in points if r.round is not None]
            left.scatter([r.workers for r in each], [r.seconds for r in each], s=12, alpha=0.5, color=drawn.get_color())
            each = [r for r in each if r.speedup is not None]
            right.scatter(
                [r.workers for r in each], [r.speedup for r in each], s=12, alpha=0.5, color=drawn.get_color()
            )
    right.plot(workers, workers, linestyle="--", color="grey", alpha=0.6, label="ideal")
    for axes, label in ((left, "seconds (full first refresh)"), (right, "speed-up over 1 worker")):
        axes.set_xscale("log", base=2)
        axes.set_xticks(workers, labels=[str(w) for w in workers])
        axes.set_xlabel("workers")
        axes.set_ylabel(label)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    missing: dict[tuple[str, str], list[str]] = {}  # (mode, why) → storages
    for r in rows:
        if r.workers is None:
            missing.setdefault((r.mode, r.note or "not available"), []).append(r.storage)
    lines = [textwrap.fill(f"{mode} ({', '.join(where)}): {why}", 130) for (mode, why), where in missing.items()]
    figure.suptitle("\n".join([title, *lines]), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)

"""Costs as the lake grows (``aperio bench --lake-scale PNG``): a no-op refresh, ``aperio status``, a
catalog first connect, a warm connect and a first connect after one change, at 1k / 10k / 100k raw
files on local disk and 1k / 10k on the loopback S3 behind the latency proxy (20 ms per request).

The lake is one schema, ``sales``: ``min(200, files / 5)`` one-file tables ``tNNN.csv`` and a Hive table
``events/day=NNNNNN/part.csv`` with the rest, one small CSV per file. It is laid down already
refreshed, without converting 100,000 files: every raw file is written, its converted Parquet (one
real conversion's bytes) is stored under the name the refresh gives it, and its lineage row says
what a conversion would have recorded (size, mtime and etag from the listing); then one untimed
refresh runs, which must convert nothing (it marks every batch, writes the model and the views). On
S3 all of this goes straight to the loopback server; only the measured operations go through the
proxy.

Each operation is measured once, on a new :class:`~aperio_assets.lake.Lake` (no state readers kept):

- ``noop_refresh``: ``refresh(lake)`` when nothing changed (checked: nothing converted, marked or
  written);
- ``status``: ``lake_status(lake)``, what ``aperio status`` reports;
- ``first_connect``: ``open_catalog`` in a FRESH PROCESS with an empty catalog cache directory (the
  seconds are the call's, imports excluded; they are given apart), every view bound;
- ``warm_connect``: a second ``open_catalog`` in this process (the first, untimed, attached the
  cache the fresh process built);
- ``changed_connect``: one new one-file table is added and refreshed (untimed), then ``open_catalog``
  in a fresh process with the cache of the previous definitions in place.

Requests are counted by kind by the storage providers (on S3 a LIST is one page of up to 1,000 keys;
on local disk one listing call), GETs are split into raw files, converted files and state; on S3 the
proxy also counts everything it sees, DuckDB's own requests (the catalog binding views) included.
Three targets are checked and reported with their numbers: a no-op refresh GETs no raw or converted
file and makes O(files / 1000) LIST pages; a warm connect makes no request per table; a first connect
after a change binds only the views whose definitions changed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aperio_assets.bench.s3server import loopback_s3
from aperio_assets.bench.scaleout import latency_proxy

SCHEMA = "sales"
MAX_TABLES = 200
LOCAL_FILES = (1_000, 10_000, 100_000)
S3_FILES = (1_000, 10_000)
OPERATIONS = ("noop_refresh", "status", "first_connect", "warm_connect", "changed_connect")
BODY = b"id,v\n1,2\n"
# A no-op refresh may LIST, beyond one page per 1,000 raw and 1,000 converted files, this many
# times: the state directories, the model's folder, the views (a constant, whatever the lake's size).
NOOP_LIST_ALLOWANCE = 10
# At a changed connect, DuckDB may bind the one changed view: a listing and a footer or two.
CHANGED_BIND_ALLOWANCE = 10
Progress = Callable[[str], None]


@dataclass
class LakeScaleRow:
    storage: str
    s3_latency_ms: float | None
    files: int  # raw files in the lake
    tables: int
    operation: str
    seconds: float
    requests: dict[str, int] = field(default_factory=dict)  # by kind, from aperio's storage providers
    list_pages: int = 0  # LIST requests (S3: pages of up to 1,000 keys; local disk: listing calls)
    raw_gets: int | None = None  # GETs of raw files (None: not counted, e.g. in a child process)
    converted_gets: int | None = None  # GETs of converted files under tables/
    proxy_requests: int | None = None  # S3: every request the endpoint saw (DuckDB's included)
    detail: dict[str, Any] = field(default_factory=dict)
    target: str | None = None  # the target this row is checked against
    target_met: bool | None = None
    verdict: str | None = None  # the target's numbers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lake_paths(files: int) -> list[str]:
    """The raw files' paths below the base: the one-file tables, then the Hive partitions."""
    tables = min(MAX_TABLES, files // 5)
    paths = [f"{SCHEMA}/t{i:03d}.csv" for i in range(tables)]
    paths += [f"{SCHEMA}/events/day={d:06d}/part.csv" for d in range(files - tables)]
    return paths


# -- counting ------------------------------------------------------------------------------------
class Recorder:
    """Counts the requests of a lake's storage providers by kind, and its GETs by what they read."""

    def __init__(self, lake: Any) -> None:
        from aperio_assets import layout

        self.providers = [lake.storage] if lake.lake_storage is lake.storage else [lake.storage, lake.lake_storage]
        self.aperio = lake.config.aperio_directory.rstrip("/") + "/"
        self.base = lake.config.base_directory.rstrip("/") + "/"
        self.tables = lake.storage.aperio_path(SCHEMA, layout.TABLES_DIR).rstrip("/") + "/"
        self.gets: Counter[str] = Counter()
        for provider in self.providers:
            for method in ("read_bytes", "read_range", "download"):
                setattr(provider, method, self._recording(getattr(provider, method)))

    def _recording(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def recorded(path: str, *args: Any, **kwargs: Any) -> Any:
            self.gets[self.kind(path)] += 1
            return call(path, *args, **kwargs)

        return recorded

    def kind(self, path: str) -> str:
        if path.startswith(self.tables):
            return "converted"
        if path.startswith(self.aperio):
            return "state"
        return "raw" if path.startswith(self.base) else "other"

    def reset(self) -> None:
        self.gets.clear()
        for provider in self.providers:
            provider.counters.reset()

    def requests(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for provider in self.providers:
            total.update(provider.counters.snapshot())
        return {k: v for k, v in total.items() if v}

    def row_values(self) -> dict[str, Any]:
        """What a row says of the requests since :meth:`reset`."""
        return {"requests": self.requests(), "raw_gets": self.gets["raw"], "converted_gets": self.gets["converted"]}


# -- the lake ------------------------------------------------------------------------------------
@dataclass
class _Scenario:
    storage: str
    files: int
    config_path: str  # what the measured operations use (S3: through the proxy)
    direct_config_path: str  # S3: the loopback server itself, for laying the lake down
    cache_dir: str
    latency_ms: float | None = None
    proxy: Any = None


def _write_config(path: Path, base: str, endpoint: str | None) -> str:
    text = f"baseDirectory: {json.dumps(base)}\nschemas: [{SCHEMA}]\n"
    if endpoint:
        text += f"storage:\n  s3:\n    endpoint_url: {json.dumps(endpoint)}\n"
    path.write_text(text, encoding="utf-8")
    return str(path)


def _put_all(storage: Any, items: Sequence[tuple[str, bytes]]) -> None:
    local = storage.local_path(items[0][0]) is not None if items else True
    if local:
        for path, data in items:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(data)
        return
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda item: storage.write_bytes(item[0], item[1]), items))


def lay_down(config_path: str, files: int, workdir: Path) -> int:
    """Write a refreshed lake of ``files`` raw files (see the module's docstring); returns its tables."""
    from aperio_assets import layout
    from aperio_assets.conversion.formats import convert_file
    from aperio_assets.conversion.refresh import SchemaRefresh, _mtime_ms
    from aperio_assets.lake import open_lake
    from aperio_assets.state.access import open_state

    lake = open_lake(config_path)
    base = lake.config.base_directory
    _put_all(lake.lake_storage, [(lake.lake_storage.join(base, p), BODY) for p in lake_paths(files)])
    sample = workdir / "sample.csv"
    sample.write_bytes(BODY)
    converted = convert_file(sample, "csv", workdir / "sample.parquet")
    parquet = (workdir / "sample.parquet").read_bytes()
    extra = json.dumps({"columns": [list(c) for c in converted.columns]})
    run = SchemaRefresh(lake, lake.schema(SCHEMA))
    targets, rows = [], []
    for table in run.discovery.tables:
        for raw in table.files:
            target = run.named_target(table, raw)
            targets.append((target, parquet))
            rows.append(
                {
                    "source_path": raw.path,
                    "target_path": target,
                    "converted_at": 1,
                    "conversion_type": "csv->parquet",
                    "row_count": converted.row_count,
                    "source_size": raw.info.size,
                    "source_modified": _mtime_ms(raw.info.mtime),
                    "source_etag": raw.info.etag,
                    "table_name": table.name,
                    "error": None,
                    "extra": extra,
                }
            )
    _put_all(lake.storage, targets)
    open_state(lake, SCHEMA, layout.CONVERSIONS).apply(rows, [])
    return len(run.discovery.tables)


def _settle(config_path: str) -> None:
    """The untimed refresh that marks every batch and writes the model and views: converts nothing."""
    from aperio_assets.conversion.refresh import refresh
    from aperio_assets.lake import open_lake

    (result,) = refresh(open_lake(config_path))
    converted = result.count("files", "converted") + result.count("files", "failed")
    if converted:
        raise RuntimeError(f"the laid-down lake is not refreshed: the settling refresh converted {converted} files")


# -- the operations --------------------------------------------------------------------------------
CONNECT_CHILD = """
import json, sys, time
started = time.perf_counter()
from aperio_assets.catalog.connect import open_catalog
from aperio_assets.lake import open_lake
imported = time.perf_counter() - started
lake = open_lake(sys.argv[1])
started = time.perf_counter()
con, report = open_catalog(lake)
views = con.execute("SELECT count(*) FROM duckdb_views() WHERE NOT internal").fetchone()[0]
seconds = time.perf_counter() - started
con.close()
providers = [lake.storage] if lake.lake_storage is lake.storage else [lake.storage, lake.lake_storage]
requests = {}
for provider in providers:
    for kind, n in provider.counters.snapshot().items():
        requests[kind] = requests.get(kind, 0) + n
plain = {k: v for k, v in vars(report).items() if isinstance(v, (bool, int, float, str)) or v is None}
bound = getattr(report, "bound", None)  # the views this connect bound, when the catalog says
plain["bound"] = len(bound) if isinstance(bound, (list, tuple, set)) else bound
print(json.dumps({"seconds": seconds, "import_seconds": imported, "views": views,
                  "broken": len(report.broken), "report": plain, "requests": requests}))
"""


def _child_connect(scenario: _Scenario) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CONNECT_CHILD, scenario.config_path],
        capture_output=True,
        text=True,
        env={**os.environ, "APERIO_CACHE_DIR": scenario.cache_dir, "PYTHONWARNINGS": "ignore"},
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"the catalog connect failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall


def _proxied(scenario: _Scenario, fn: Callable[[], Any]) -> tuple[Any, int | None]:
    before = scenario.proxy.requests() if scenario.proxy is not None else None
    result = fn()
    return result, (scenario.proxy.requests() - before if before is not None else None)


def _row(scenario: _Scenario, tables: int, operation: str, seconds: float, **values: Any) -> LakeScaleRow:
    requests = values.pop("requests", {})
    return LakeScaleRow(
        scenario.storage,
        scenario.latency_ms,
        scenario.files,
        tables,
        operation,
        round(seconds, 4),
        requests,
        requests.get("LIST", 0),
        **values,
    )


@contextlib.contextmanager
def _cache_directory(path: str) -> Iterator[None]:
    """This process's catalog cache is the scenario's (the one its fresh processes build and use)."""
    previous = os.environ.get("APERIO_CACHE_DIR")
    os.environ["APERIO_CACHE_DIR"] = path
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("APERIO_CACHE_DIR", None)
        else:
            os.environ["APERIO_CACHE_DIR"] = previous


def measure_scenario(scenario: _Scenario, tables: int, note: Progress) -> list[LakeScaleRow]:
    with _cache_directory(scenario.cache_dir):
        return _measure_scenario(scenario, tables, note)


def _connect_row(scenario: _Scenario, tables: int, operation: str, **detail: Any) -> LakeScaleRow:
    """A connect in a fresh process (``first_connect``, ``changed_connect``): its time, requests
    (aperio's and, through the proxy, DuckDB's too) and what the catalog report said."""
    (child, wall), proxied = _proxied(scenario, lambda: _child_connect(scenario))
    return _row(
        scenario,
        tables,
        operation,
        child["seconds"],
        requests={k: v for k, v in child["requests"].items() if v},
        proxy_requests=proxied,
        detail={
            "process_seconds": round(wall, 3),
            "import_seconds": round(child["import_seconds"], 3),
            "views": child["views"],
            "broken": child["broken"],
            "cache": child["report"].get("cache"),
            **detail,
            "bound": child["report"].get("bound"),
        },
    )


def _measure_scenario(scenario: _Scenario, tables: int, note: Progress) -> list[LakeScaleRow]:
    from aperio_assets.catalog.connect import open_catalog
    from aperio_assets.conversion.refresh import refresh
    from aperio_assets.lake import open_lake
    from aperio_assets.status import lake_status

    rows: list[LakeScaleRow] = []
    where = f"{scenario.storage} {scenario.files:,} files"

    note(f"{where}: no-op refresh")
    lake = open_lake(scenario.config_path)
    recorder = Recorder(lake)
    recorder.reset()
    started = time.perf_counter()
    (result,), proxied = _proxied(scenario, lambda: refresh(lake))
    seconds = time.perf_counter() - started
    did = {
        "converted": result.count("files", "converted"),
        "processed": result.count("batches", "processed"),
        "model_written": result.model_written,
    }
    rows.append(
        _row(
            scenario,
            tables,
            "noop_refresh",
            seconds,
            **recorder.row_values(),
            proxy_requests=proxied,
            detail={**did, "state_gets": recorder.gets["state"]},
        )
    )
    if did["converted"] or did["processed"] or did["model_written"]:
        rows[-1].detail["not_a_no_op"] = True

    note(f"{where}: status")
    lake = open_lake(scenario.config_path)
    recorder = Recorder(lake)
    recorder.reset()
    started = time.perf_counter()
    _, proxied = _proxied(scenario, lambda: lake_status(lake))
    rows.append(
        _row(
            scenario,
            tables,
            "status",
            time.perf_counter() - started,
            **recorder.row_values(),
            proxy_requests=proxied,
        )
    )

    note(f"{where}: first connect (a fresh process, an empty cache)")
    rows.append(_connect_row(scenario, tables, "first_connect"))

    note(f"{where}: warm connect")
    lake = open_lake(scenario.config_path)
    con, report = open_catalog(lake)  # untimed: attaches the cache the fresh process built
    con.close()
    untimed_cache = getattr(report, "cache", None)
    recorder = Recorder(lake)
    recorder.reset()

    def warm() -> tuple[int, Any]:
        con, report = open_catalog(lake)
        try:
            return con.execute("SELECT count(*) FROM duckdb_views() WHERE NOT internal").fetchone()[0], report
        finally:
            con.close()

    started = time.perf_counter()
    (views, report), proxied = _proxied(scenario, warm)
    rows.append(
        _row(
            scenario,
            tables,
            "warm_connect",
            time.perf_counter() - started,
            **recorder.row_values(),
            proxy_requests=proxied,
            detail={"views": views, "cache": getattr(report, "cache", None), "untimed_connect_cache": untimed_cache},
        )
    )

    note(f"{where}: first connect after one change")
    lake = open_lake(scenario.direct_config_path)
    lake.lake_storage.write_bytes(lake.lake_storage.join(lake.config.base_directory, SCHEMA, "zz_added.csv"), BODY)
    refresh(open_lake(scenario.config_path))  # untimed: converts the one file, adds its view
    rows.append(_connect_row(scenario, tables + 1, "changed_connect", changed_views=1))
    judge(rows)
    return rows


def judge(rows: list[LakeScaleRow]) -> None:
    """Check each row against its target, with the numbers."""
    by_operation = {r.operation: r for r in rows}
    for r in rows:
        total = sum(r.requests.values())
        if r.operation == "noop_refresh":
            pages = math.ceil(r.files / 1000) * 2  # the raw files' listing and tables/'s
            bound = pages + NOOP_LIST_ALLOWANCE
            r.target = "no GET of a raw or converted file; O(files / 1000) LIST pages"
            r.target_met = r.raw_gets == 0 and r.converted_gets == 0 and r.list_pages <= bound
            if r.detail.get("not_a_no_op"):
                r.target_met = False
            r.verdict = (
                f"raw GETs {r.raw_gets}, converted GETs {r.converted_gets}, LIST {r.list_pages} "
                f"(allowed {bound}: 2 x {math.ceil(r.files / 1000)} pages + {NOOP_LIST_ALLOWANCE})"
            )
        elif r.operation == "warm_connect":
            seen = r.proxy_requests if r.proxy_requests is not None else total
            r.target = "no request per table"
            r.target_met = seen < r.tables and r.raw_gets == 0 and r.converted_gets == 0
            r.verdict = f"{seen} requests for {r.tables} tables ({r.detail.get('views')} views)"
        elif r.operation == "changed_connect":
            r.target = "binds only the views whose definitions changed"
            first = by_operation.get("first_connect")
            bound = r.detail.get("bound")
            verdicts, met = [], []
            if isinstance(bound, int):  # the catalog says how many views it bound
                met.append(bound <= r.detail["changed_views"])
                first_bound = first.detail.get("bound") if first else None
                verdicts.append(
                    f"bound {bound} view(s) for {r.detail['changed_views']} changed (a first connect: {first_bound})"
                )
            if r.proxy_requests is not None:  # S3: DuckDB's requests are the proxy's minus aperio's
                duckdb_now = r.proxy_requests - sum(r.requests.values())
                duckdb_first = (
                    first.proxy_requests - sum(first.requests.values())
                    if first and first.proxy_requests is not None
                    else None
                )
                met.append(duckdb_now <= CHANGED_BIND_ALLOWANCE)
                verdicts.append(
                    f"DuckDB made {duckdb_now} requests binding views (a first connect: {duckdb_first}; "
                    f"allowed {CHANGED_BIND_ALLOWANCE})"
                )
            if met:
                r.target_met = all(met)
                r.verdict = "; ".join(verdicts)
            else:  # local disk: DuckDB's reads are not requests; the catalog's report and the time
                rebuilt = r.detail.get("cache") in ("built", "rebuilt")
                r.target_met = False if rebuilt else None
                what = "every view bound again" if rebuilt else "not known how many views were bound"
                against = f" against {first.seconds:.3f} s for a first connect" if first else ""
                r.verdict = f"catalog cache: {r.detail.get('cache')} ({what}); {r.seconds:.3f} s{against}"


# -- the whole measurement --------------------------------------------------------------------------
@contextlib.contextmanager
def _s3_endpoints(latency_ms: float) -> Iterator[tuple[Any, Any]]:
    with loopback_s3() as s3, latency_proxy(s3.endpoint_url, latency_ms) as proxy:
        yield s3, proxy


def measure_lake_scale(
    local_files: Sequence[int] = LOCAL_FILES,
    s3_files: Sequence[int] = S3_FILES,
    s3_latency_ms: float = 20.0,
    progress: Progress | None = None,
) -> list[LakeScaleRow]:
    """Every operation at every size, local disk first, then S3; one row each."""
    note = progress or (lambda message: None)
    rows: list[LakeScaleRow] = []
    with tempfile.TemporaryDirectory(prefix="aperio-lakescale-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        s3 = proxy = None
        if s3_files:
            s3, proxy = stack.enter_context(_s3_endpoints(s3_latency_ms))
        for storage, sizes in (("local", local_files), ("s3", s3_files)):
            for files in sizes:
                name = f"{storage}-{files}"
                (tmp / name).mkdir()
                if storage == "local":
                    config = _write_config(tmp / name / "aperio.yaml", str(tmp / name / "lake"), None)
                    scenario = _Scenario(storage, files, config, config, str(tmp / name / "cache"))
                else:
                    assert s3 is not None and proxy is not None
                    base = f"s3://{s3.bucket}/lakescale-{uuid.uuid4().hex[:8]}/lake"
                    scenario = _Scenario(
                        storage,
                        files,
                        _write_config(tmp / name / "aperio.yaml", base, proxy.url),
                        _write_config(tmp / name / "direct.yaml", base, s3.endpoint_url),
                        str(tmp / name / "cache"),
                        s3_latency_ms,
                        proxy,
                    )
                note(f"{storage} {files:,} files: laying the lake down")
                tables = lay_down(scenario.direct_config_path, files, tmp / name)
                note(f"{storage} {files:,} files: settling refresh")
                _settle(scenario.config_path)
                rows += measure_scenario(scenario, tables, note)
    return rows


def plot(rows: list[LakeScaleRow], path: str | os.PathLike[str], title: str) -> None:
    """Seconds (left) and requests (right: the proxy's count on S3, aperio's on local disk) over raw
    files, one line per operation and storage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    for series in dict.fromkeys((r.operation, r.storage) for r in rows):
        points = sorted((r for r in rows if (r.operation, r.storage) == series), key=lambda r: r.files)
        label = f"{series[0]} ({series[1]})"
        style = "-" if series[1] == "local" else "--"
        left.plot([r.files for r in points], [r.seconds for r in points], style, marker="o", label=label)
        right.plot(
            [r.files for r in points],
            [max(1, r.proxy_requests if r.proxy_requests is not None else sum(r.requests.values())) for r in points],
            style,
            marker="o",
            label=label,
        )
    for axes, label in ((left, "seconds"), (right, "requests (S3: all the endpoint saw; local: aperio's)")):
        axes.set_xscale("log")
        axes.set_yscale("log")  # (every figure is above 0: a warm connect still LISTs)
        axes.set_xlabel("raw files in the lake")
        axes.set_ylabel(label)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)

"""What several test modules share: the storage and lake cases the conftest fixtures hand out, the
`aperio` command run in-process, writing raw files into a lake, a lake's whole state for comparing
two lakes, Dagster homes and launcher processes, and running a function in several processes.

Test modules import from here, never from each other nor from ``conftest.py``."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from aperio_assets import layout
from aperio_assets.bench.pginstance import postgres_server
from aperio_assets.config import S3Settings
from aperio_assets.lake import Lake, open_lake
from aperio_assets.processes import worker_context, worker_process
from aperio_assets.storage import LocalStorage, S3Storage, StorageProvider

ROOT = Path(__file__).parents[1]
TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "aperio-test-key",
    "AWS_SECRET_ACCESS_KEY": "aperio-test-secret",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- storage and lake cases (the conftest fixtures build them) -------------------------------------


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def settings(self) -> S3Settings:
        return S3Settings(endpoint_url=self.endpoint_url, region="us-east-1")

    def reset(self) -> None:
        import urllib.request

        urllib.request.urlopen(
            urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST"), timeout=10
        ).read()

    def create_bucket(self, name: str) -> None:
        import boto3

        boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
        ).create_bucket(Bucket=name)


@dataclass
class StorageCase:
    """A provider and a fresh root location on it (a tmp dir, or an S3 prefix in a new bucket)."""

    kind: str
    root: str
    provider: StorageProvider
    s3: S3Server | None = None

    def new_provider(self) -> StorageProvider:
        """A second, independent provider on the same storage (another worker, say)."""
        if self.kind == "s3":
            assert self.s3 is not None
            return S3Storage(self.s3.settings(), aperio_root=self.provider.aperio_root)
        return LocalStorage(aperio_root=self.provider.aperio_root)


@dataclass
class TrackerCase:
    """A way to open trackers on one schema's state: ``duckdb`` (local mode), ``shared-local``,
    ``shared-s3``. Each ``open()`` is a new, independent instance (a fresh reader or worker)."""

    kind: str
    storage: StorageProvider | None
    duckdb_path: str | None

    def open(self, **kwargs: Any) -> Any:
        from aperio_assets.state import DuckDBPartitionStatusStore, ParquetPartitionStatusStore

        if self.kind == "duckdb":
            return DuckDBPartitionStatusStore(self.duckdb_path)
        assert self.storage is not None
        return ParquetPartitionStatusStore(self.storage, "sales", **kwargs)


@dataclass
class LakeCase:
    """A configured lake with one schema folder ``sales``, on local disk or in the loopback S3."""

    kind: str
    config_path: str
    base: str

    def lake(self) -> Lake:
        return open_lake(self.config_path)

    def moved(self, base: str, config: Path) -> Lake:
        """This lake's configuration, written to ``config`` with its base directory moved to ``base``
        (a new, empty lake; the folder is created on local disk)."""
        text = Path(self.config_path).read_text()
        config.write_text(
            text.replace(f"baseDirectory: {self.base}", f"baseDirectory: '{base}'").replace(
                "baseDirectory: lake", f"baseDirectory: '{base}'"
            )
        )
        if self.kind == "local":
            os.makedirs(base)
        return open_lake(config)

    def sibling(self, tmp_path: Path, name: str) -> Lake:
        """A second, empty lake like this one beside it, at ``<parent>/<name>`` (config ``<name>.yaml``)."""
        return self.moved(self.base.rsplit("/", 1)[0] + "/" + name, tmp_path / f"{name}.yaml")


@dataclass
class FaultyS3:
    """The loopback S3 server behind a fault-injecting proxy (``proxy``: set faults, read counts)."""

    proxy: Any
    upstream_url: str

    @property
    def endpoint_url(self) -> str:
        return self.proxy.url

    def settings(self, max_attempts: int = 6) -> S3Settings:
        return S3Settings(endpoint_url=self.endpoint_url, region="us-east-1", max_attempts=max_attempts)


# -- the `aperio` command, in-process ----------------------------------------------------------------


SERVER_LOGGERS = ("werkzeug", "moto")  # the loopback S3 server's (moto on werkzeug, in the test process)


@dataclass(frozen=True)
class CliResult:
    """What a run of the command left: its exit code and everything it wrote."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> CliResult:
    """``aperio ARGS`` as the console script runs it (``sys.exit(main(argv))``), in this process:
    ``env`` added to the environment and ``cwd`` the working directory for the call only, stdout
    and stderr captured, and the logging setup the command installs undone afterwards."""
    from aperio_assets.cli.app import NOISY_LOGGERS, main

    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    saved_noisy = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    # the loopback S3 server runs in this process, the command's own process would not log its requests
    servers = [logging.getLogger(name) for name in SERVER_LOGGERS]
    saved_servers = [server.disabled for server in servers]
    for server in servers:
        server.disabled = True
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        if cwd is not None:
            patch.chdir(cwd)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = main(list(args))
                except SystemExit as exit_:  # argparse's usage errors (exit 2) and --help (exit 0)
                    code = _exit_code(exit_.code, err)
        finally:
            root.handlers[:] = saved_root[0]
            root.setLevel(saved_root[1])
            for name, level in saved_noisy.items():
                logging.getLogger(name).setLevel(level)
            for server, disabled in zip(servers, saved_servers, strict=True):
                server.disabled = disabled
    return CliResult(code, out.getvalue(), err.getvalue())


def _exit_code(code: object, stderr: io.StringIO) -> int:
    """The exit status ``sys.exit(code)`` gives a process."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=stderr)
    return 1


# -- raw files in a lake -------------------------------------------------------------------------------


def put(lake: Lake, relative: str, data: bytes) -> str:
    """Write a raw file below the lake's base directory; returns its path."""
    path = lake.lake_storage.join(lake.config.base_directory, relative)
    lake.lake_storage.write_bytes(path, data)
    return path


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def excel_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_excel(buffer)
    return buffer.getvalue()


def seed(lake: Lake) -> None:
    """Schema ``sales``: one file of every format, and a Hive table ``orders`` of two monthly batches."""
    put(lake, "sales/customers.csv", b'id,name,score\n1,Ann,NA\n2,Bob,\n3,"Lee, Jr",7\n')
    put(lake, "sales/regions.tsv", b"code\tname\nN\tNorth\nS\tSouth\n")
    put(lake, "sales/products.json", json.dumps([{"sku": "a", "price": 1.5}, {"sku": "b", "price": None}]).encode())
    put(lake, "sales/events.jsonl", b'{"e": 1}\n{"e": 2}\n{"e": 3}\n')
    put(lake, "sales/staff.xlsx", excel_bytes(pl.DataFrame({"who": ["x", "y"], "age": [30, 40]})))
    put(lake, "sales/rates.parquet", parquet_bytes(pl.DataFrame({"r": [0.1, 0.2, 0.3, 0.4]})))
    for month, rows in (("01", 2), ("02", 3)):
        body = "id,amount\n" + "".join(f"{i},{i * 10}\n" for i in range(rows))
        put(lake, f"sales/orders/year=2024/month={month}/part-0.csv", body.encode())
    put(lake, "sales/orders/year=2024/month=02/part-1.jsonl", b'{"id": 9, "amount": 90}\n')


# -- a lake's whole state, to compare two lakes ---------------------------------------------------------

TIMES = {"converted_at", "processed_at", "updated_at", "generatedAt", "source_modified"}


def lake_state(lake: Lake) -> dict:
    """Everything a refresh leaves in schema ``sales`` (lineage, marks, model, every view's rows),
    with times dropped and the lake's own location made relative."""
    from aperio_assets.catalog import connect
    from aperio_assets.state.access import open_state

    base, aperio = lake.config.base_directory, lake.config.aperio_directory

    def clean(value: Any) -> Any:
        return value.replace(aperio, "<aperio>").replace(base, "<base>") if isinstance(value, str) else value

    def rows(name: str) -> list:
        return sorted(
            json.dumps({k: clean(v) for k, v in r.items() if k not in TIMES}, sort_keys=True, default=str)
            for r in open_state(lake, "sales", name).rows()
        )

    model = json.loads(lake.storage.read_bytes(lake.storage.aperio_path("sales", layout.GENERATED_MODEL)))
    model.pop("generatedAt")
    con = connect(lake)
    tables = {}
    for (view,) in con.execute("SELECT view_name FROM duckdb_views() WHERE schema_name = 'sales'").fetchall():
        tables[view] = sorted(map(repr, con.execute(f'SELECT * FROM sales."{view}"').fetchall()))
    return {
        "lineage": rows(layout.CONVERSIONS),
        "status": rows(layout.PARTITION_STATUS),
        "model": json.loads(clean(json.dumps(model))),
        "tables": tables,
    }


def assert_same_state(got: dict, expected: dict) -> None:
    """Two :func:`lake_state` results are equal, part by part, naming what differs."""
    for part in expected:
        if isinstance(expected[part], list):
            assert (
                sorted(set(got[part]) - set(expected[part])) == []
                and sorted(set(expected[part]) - set(got[part])) == []
            ), part
        assert got[part] == expected[part], part


# -- processes ---------------------------------------------------------------------------------------


# What the tests' writer processes import, once per pytest process, in the fork server they are
# forked from (``aperio_assets.processes``; the first caller in a process preloads it).
TEST_PRELOAD = ["aperio_tests.helpers", "aperio_assets.conversion.parallel", "s3fs", "pyarrow.dataset"]


def process_context() -> BaseContext:
    """The context of a test's writer processes: real operating-system processes, forked from a
    fork server, each with the test's environment (``worker_process``)."""
    return worker_context(TEST_PRELOAD)


def run_in_processes(target: Callable[..., None], args: Iterable[tuple], timeout: float = 300) -> None:
    """``target(*a)`` for each ``a`` in ``args``, each in its own process, all at once; every one
    must exit 0 within ``timeout`` seconds."""
    ctx = process_context()
    procs = [worker_process(ctx, target, a) for a in args]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
        assert p.exitcode == 0, (target.__name__, p.exitcode)


def dagster_home(tmp_path: Path, name: str) -> Path:
    """A fresh DAGSTER_HOME ``tmp_path/name`` with the project's dagster.yaml."""
    home = tmp_path / name
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    return home


def start_refresh(home: Path, config: Path, *options: str) -> subprocess.Popen[str]:
    """``python -m aperio_assets.defs.launch --workers 1 *options`` (what `make run` runs) on the
    instance in ``home``: a process of its own, as each Dagster instance in a deployment is."""
    env = {**os.environ, "DAGSTER_HOME": str(home), "APERIO_CONFIG": str(config), "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, "-m", "aperio_assets.defs.launch", "--workers", "1", *options],
        env=env,
        cwd=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> str:
    """The launcher's output, once it exited 0."""
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-4000:]
    return output


HOSTILE = 'x"; DROP SCHEMA sales; --'


def build_catalog_lake(lake_case: LakeCase) -> Lake:
    """Two schemas (sales, ref) with a partitioned table, a hostile name, and refreshed state."""
    lake = lake_case.lake()
    put(lake, "sales/orders/year=2024/month=01/a.csv", b"id,carrier,amount\n1,AA,10\n2,UA,20\n")
    put(lake, "sales/orders/year=2024/month=02/a.csv", b"id,carrier,amount\n3,AA,30\n")
    put(lake, f"sales/{HOSTILE}.csv", b"v\n42\n")
    put(
        lake,
        "ref/carriers.json",
        json.dumps([{"carrier": "AA", "name": "American"}, {"carrier": "UA", "name": "United"}]).encode(),
    )
    lake = lake_case.lake()  # rediscover: ref is new
    from aperio_assets.conversion.refresh import refresh

    refresh(lake)
    return lake


# -- PostgreSQL --------------------------------------------------------------------------------------


def tail_of(path: Path, lines: int = 80) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"({path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def postgres() -> Iterator[Any]:
    """A PostgreSQL 16 server (pgserver) in a temporary directory of its own, stopped and removed on
    exit. Never skips: a server that cannot start fails the test, with the reason and the server's log.
    Not below pytest's basetemp: as root, pgserver runs PostgreSQL as its own user, and every pytest
    session that starts meanwhile (another on this machine) makes pytest-of-root 0700 again; the
    server, cut off from its data directory, shuts itself down within a minute."""
    with tempfile.TemporaryDirectory(prefix="aperio-postgres-") as temporary, _postgres(Path(temporary)) as server:
        yield server


@contextlib.contextmanager
def _postgres(directory: Path) -> Iterator[Any]:
    """The bench's server (``postgres_server``), failing the test with the server's log if it
    cannot start."""
    stack = contextlib.ExitStack()
    try:
        server = stack.enter_context(postgres_server(directory))
    except Exception as exc:
        pytest.fail(
            f"PostgreSQL could not start with pgserver in {directory}: {exc!r}\n"
            f"server log:\n{tail_of(directory / 'data' / 'log')}",
            pytrace=False,
        )
    with stack:
        yield server


# -- Dagster runs ------------------------------------------------------------------------------------


def refresh_all(config_path: str, instance: Any, *, expect_success: bool = True) -> list[Any]:
    """The lake's refresh as runs on ``instance``: the changed batches' runs, then
    ``aperio_catalog_job``; their ``ExecuteInProcessResult``s."""
    from aperio_assets.defs.launch import refresh_with_runs

    launched = refresh_with_runs(config_path, workers=1, instance=instance)
    if expect_success:
        assert launched.failed == [], launched.runs
    return launched.results


def partition_states(instance: Any, schema: str) -> dict[str, str]:
    """``schema``'s batches and the status Dagster shows for each (``MATERIALIZED``, ``FAILED``...)."""
    import dagster as dg

    from aperio_assets.defs.partitions import batches_partitions

    partitions = batches_partitions(schema)
    keys = instance.get_dynamic_partitions(partitions.name)
    status = instance.get_status_by_partition(dg.AssetKey([schema, "partition_status"]), keys, partitions)
    return {k: v.value for k, v in (status or {}).items()}

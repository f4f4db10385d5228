"""The deployment proof (issue 14): multi-node Dagster, for real, on this machine.

One PostgreSQL server (pgserver) holds the run, event-log and schedule storage; one
``dagster-daemon`` (a subprocess with its own DAGSTER_HOME, whose dagster.yaml is derived from
``deploy/dagster.yaml``) runs the sensors, the run queue, run monitoring and run retries; each run
is its own process (``DefaultRunLauncher``: the stand-in for an ECS task or a Kubernetes Job); the
lake (Hive partitions, small tables, and legacy state to migrate) lives in the loopback S3. No run
is launched by hand: ``legacy_state_sensor`` migrates, ``lake_change_sensor`` (started with the
``dagster`` CLI, as an operator would) requests the batch runs, ``aperio_automation_sensor`` runs
the model and the views after them. Then a run worker is killed with SIGKILL mid-run: the run is
marked failed, run retries runs it again, and the lake ends exactly as if nothing had happened.
The sensors tick every ``SENSOR_INTERVAL`` seconds (``$APERIO_SENSOR_INTERVAL_SECONDS``; a minute,
or half a minute for the automation sensor, without it), and the test checks that they did.
(With DefaultRunLauncher it is the code server that started the worker which sees it die and marks
the run failed; run monitoring checks a worker's health only with the ECS and Kubernetes launchers.)

The deploy/ files themselves are loaded too: deploy/dagster.yaml as a real instance on this
PostgreSQL (its ECS run launcher constructed), deploy/dagster-k8s.yaml against Dagster's instance
schema (dagster-k8s is not installed here), deploy/workspace.yaml against the workspace schema.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import polars as pl
import pytest
import yaml
from dagster._core.instance.config import dagster_instance_config
from dagster._core.scheduler.instigation import InstigatorType, TickStatus
from dagster._core.workspace.config_schema import ensure_workspace_config

from aperio_assets.catalog.connect import connect
from aperio_assets.defs.sensors import (
    AUTOMATION_SENSOR_INTERVAL,
    LAKE_SENSOR_INTERVAL,
    SENSOR_INTERVAL_ENV,
)
from aperio_assets.demo import write_demo_lake
from aperio_assets.instance.postgres import instance_storage
from aperio_assets.state import open_lineage, open_tracker
from aperio_assets.state.keys import canonical_key
from aperio_assets.storage import S3Storage
from aperio_tests.helpers import FaultyS3, S3Server, postgres, tail_of

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
BATCHES_PER_RUN = 3
WAVE_PUT_LATENCY_MS = 1500
MAX_CONCURRENT_RUNS = 4
DEADLINE_SECONDS = 1200  # the whole test; it takes a few minutes
# Every aperio sensor's minimum interval here (the code location's setting): the test waits on ticks
# seconds apart, not minutes. The big batch's files are written within UPLOAD_WINDOW seconds of a
# lake_change_sensor tick's start, so that the next tick (SENSOR_INTERVAL after it at the earliest)
# sees them all.
SENSOR_INTERVAL = 10
UPLOAD_WINDOW = 5
# The batch added after the first refresh: many files, so that its run converts long enough to be
# caught and killed while it converts.
BIG_PARTITION = {"year": "2014", "month": "01"}
BIG_BATCH = "flights/year=2014/month=01"
BIG_FILES = 60
BIG_ROWS_PER_FILE = 10_000
BIG_ROWS = BIG_FILES * BIG_ROWS_PER_FILE

T = TypeVar("T")
Expected = dict[tuple[str, str], dict[str, tuple[int, int]]]  # (schema, table) -> batch key -> (rows, distinct)


# -- PostgreSQL and the processes ---------------------------------------------------------------------


def start_daemon(home: Path, workspace: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``dagster-daemon run`` in its own process group (its code server and run workers join it)."""
    with (home / "daemon.log").open("wb") as log:
        # a real process: the daemon, its code server and run workers, SIGKILLed as a node would be
        return subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)],
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop the daemon, then anything left of its process group (a code server, a run worker)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc), nearest first."""
    children, found, todo = _children(), [], [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            found.append(child)
            todo.append(child)
    return found


# -- the lake ------------------------------------------------------------------------------------------


def put_lake(lake_dir: Path, storage: S3Storage, base: str) -> list[str]:
    """Upload the demo lake's raw files (not its legacy state) to ``base``; returns their S3 paths."""
    paths = []
    for path in sorted(lake_dir.rglob("*")):
        relative = path.relative_to(lake_dir)
        if path.is_file() and ".aperio" not in relative.parts:
            paths.append(f"{base}/{relative.as_posix()}")
            storage.write_bytes(paths[-1], path.read_bytes())
    return paths


def _frame(path: Path) -> pl.DataFrame:
    if path.suffix == ".csv":
        return pl.read_csv(path, infer_schema_length=0)
    if path.suffix == ".jsonl":
        return pl.read_ndjson(path)
    if path.suffix == ".json":
        return pl.read_json(path)
    return pl.read_excel(path)


def expected_batches(lake_dir: Path) -> tuple[Expected, dict[str, int]]:
    """From the raw files on disk: rows and distinct rows per batch of every table, and rows per file
    (by path below the lake)."""
    expected: Expected = {}
    per_file: dict[str, int] = {}
    for path in sorted(lake_dir.rglob("*")):
        relative = path.relative_to(lake_dir)
        if not path.is_file() or ".aperio" in relative.parts:
            continue
        schema, table, *folders = relative.parts
        key = {k: v for k, v in (f.split("=", 1) for f in folders[:-1])}
        frame = _frame(path)
        per_file[relative.as_posix()] = frame.height
        expected.setdefault((schema, Path(table).stem), {})[canonical_key(key)] = (frame.height, frame.unique().height)
    return expected, per_file


def big_batch(lake_dir: Path) -> dict[str, bytes]:
    """The files of the big batch (path below the lake → CSV): ``BIG_ROWS`` flights in all, every one
    distinct (its own flight number)."""
    sample = pl.read_csv(
        lake_dir / "flights" / "flights" / "year=2013" / "month=01" / "flights.csv", infer_schema_length=0
    )
    rows = pl.concat([sample] * math.ceil(BIG_ROWS_PER_FILE / sample.height)).head(BIG_ROWS_PER_FILE)
    folder = f"flights/flights/year={BIG_PARTITION['year']}/month={BIG_PARTITION['month']}"
    return {
        f"{folder}/part-{n:03d}.csv": rows.with_columns(
            pl.int_range(n * BIG_ROWS_PER_FILE, (n + 1) * BIG_ROWS_PER_FILE).cast(pl.String).alias("flight")
        )
        .write_csv()
        .encode()
        for n in range(BIG_FILES)
    }


# -- the deploy files -----------------------------------------------------------------------------------


def check_deploy_files(tmp_path: Path, server: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Load deploy/dagster.yaml as an instance on the test's PostgreSQL through its DAGSTER_PG_*
    variables, construct its ECS run launcher, and check dagster-k8s.yaml and workspace.yaml against
    Dagster's schemas. Returns deploy/dagster.yaml as a dict."""
    deploy = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    k8s = yaml.safe_load((DEPLOY / "dagster-k8s.yaml").read_text())
    # the same instance but for the run launcher
    assert {k: v for k, v in k8s.items() if k != "run_launcher"} == {
        k: v for k, v in deploy.items() if k != "run_launcher"
    }
    # the storages are the ones instance_storage builds (the bench's PostgreSQL instance), on DAGSTER_PG_*
    postgres_db = deploy["event_log_storage"]["config"]["postgres_db"]
    assert {k: deploy[k] for k in ("run_storage", "event_log_storage", "schedule_storage")} == instance_storage(
        {"postgres_db": postgres_db}
    )
    assert postgres_db["hostname"] == {"env": "DAGSTER_PG_HOST"}, postgres_db
    assert (deploy["run_launcher"]["class"], k8s["run_launcher"]["class"]) == ("EcsRunLauncher", "K8sRunLauncher")
    for launcher in (deploy, k8s):
        names = launcher["run_launcher"]["config"]["env_vars"]
        assert {"APERIO_CONFIG", "APERIO_BATCHES_PER_RUN", "AWS_REGION"} <= set(names), names

    server.psql("CREATE DATABASE deploy_check;")
    socket_dir = urllib.parse.parse_qs(urllib.parse.urlparse(server.get_uri()).query)["host"][0]
    check_home = tmp_path / "deploy-check"
    check_home.mkdir()
    with monkeypatch.context() as env:
        # pgserver listens on a Unix socket only: an empty DAGSTER_PG_HOST makes libpq take the
        # socket directory from PGHOST (a deployment sets the database's host name instead).
        for name, value in {
            "DAGSTER_PG_HOST": "",
            "PGHOST": socket_dir,
            "DAGSTER_PG_USER": "postgres",
            "DAGSTER_PG_PASSWORD": "",
            "DAGSTER_PG_DB": "deploy_check",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            env.setenv(name, value)
        shutil.copy(DEPLOY / "dagster.yaml", check_home / "dagster.yaml")
        with dg.DagsterInstance.from_config(str(check_home)) as instance:
            assert instance.get_runs() == []  # the Postgres storage answers, its tables created
            # aperio's PostgreSQL storages (aperio_assets/instance/postgres.py), as instance_storage builds them
            assert type(instance.run_storage).__name__ == "PooledPostgresRunStorage"
            assert type(instance.event_log_storage).__name__ == "BatchingPostgresEventLogStorage"
            assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
            assert type(instance.run_launcher).__name__ == "EcsRunLauncher"  # constructed: config valid
            assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
            assert instance.run_monitoring_enabled and instance.run_retries_enabled
            assert instance.run_retries_max_retries in (1, 2)
            assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        (check_home / "dagster.yaml").write_text((DEPLOY / "dagster-k8s.yaml").read_text())
        config, _ = dagster_instance_config(str(check_home))  # raises on any schema error
        assert config["run_launcher"]["module"] == "dagster_k8s"
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    ensure_workspace_config(workspace, str(DEPLOY / "workspace.yaml"))
    assert workspace["load_from"][0]["grpc_server"]["location_name"] == "aperio"
    return deploy


def instance_config(deploy: dict[str, Any], postgres_url: str) -> dict[str, Any]:
    """deploy/dagster.yaml for one machine: the test's PostgreSQL, each run in its own process,
    short monitoring and run queue intervals."""
    config = copy.deepcopy(deploy)
    config.update(instance_storage({"postgres_url": postgres_url}))
    config["run_launcher"] = {"module": "dagster", "class": "DefaultRunLauncher"}
    config["concurrency"]["runs"]["max_concurrent_runs"] = MAX_CONCURRENT_RUNS
    # the queue's daemon looks for queued runs every second (default 5); the limits stay concurrency's
    config["run_coordinator"] = {
        "module": "dagster._core.run_coordinator",
        "class": "QueuedRunCoordinator",
        "config": {"dequeue_interval_seconds": 1},
    }
    config["run_monitoring"].update(poll_interval_seconds=2, start_timeout_seconds=300, cancel_timeout_seconds=60)
    config["code_servers"] = {"local_startup_timeout": 300}
    return config


# -- watching the instance -------------------------------------------------------------------------------


class Watch:
    """Polls the instance until a condition holds; a timeout, or the daemon exiting, fails the test
    with what was awaited, the runs so far and the daemon's log."""

    def __init__(self, instance: dg.DagsterInstance, daemon: subprocess.Popen[bytes], log: Path) -> None:
        self.instance, self.daemon, self.log = instance, daemon, log
        self.deadline = time.monotonic() + DEADLINE_SECONDS

    def until(self, what: str, check: Callable[[], T | None], timeout: float, every: float = 1.0) -> T:
        end = min(self.deadline, time.monotonic() + timeout)
        while True:
            if self.daemon.poll() is not None:
                pytest.fail(
                    f"the dagster-daemon exited ({self.daemon.returncode}) while waiting for {what}" + self.report(),
                    pytrace=False,
                )
            value = check()
            if value:
                return value
            if time.monotonic() > end:
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}" + self.report(), pytrace=False)
            time.sleep(every)

    def report(self) -> str:
        lines = []
        for record in sorted(self.instance.get_run_records(), key=lambda r: r.create_timestamp):
            run = record.dagster_run
            what = run.tags.get("dagster/partition") or run.tags.get("dagster/asset_partition_range_start", "")
            lines.append(f"  {run.run_id[:8]} {run.job_name} {what} {run.status.value}")
            if run.status == dg.DagsterRunStatus.FAILURE:
                lines += [f"    {m}" for m in failure_messages(self.instance, run.run_id)]
        return "\nruns:\n" + "\n".join(lines) + f"\ndaemon log ({self.log}):\n{tail_of(self.log)}"


def failure_messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    messages = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type in (dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE):
            error = getattr(event.event_specific_data, "error", None)
            messages.append((entry.message or "") + (f": {error.message.strip()[:500]}" if error else ""))
        elif event.event_type == dg.DagsterEventType.ENGINE_EVENT and re.search(
            r"terminated|signal|exited|crash|monitor", entry.message or "", re.IGNORECASE
        ):
            messages.append(entry.message)
    return messages


def runs(instance: dg.DagsterInstance, **filters: Any) -> list[dg.RunRecord]:
    return sorted(instance.get_run_records(filters=dg.RunsFilter(**filters)), key=lambda r: r.create_timestamp)


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The run worker's pid, from its engine event "Started process for run (pid: N)."."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        found = re.match(r"Started process for run \(pid: (\d+)\)", entry.message or "")
        if found:
            return int(found.group(1))
    return None


def step_seconds(instance: dg.DagsterInstance, run_id: str, step_key: str) -> float | None:
    times = {
        entry.dagster_event.event_type: entry.timestamp
        for entry in instance.all_logs(run_id)
        if entry.dagster_event is not None and entry.step_key == step_key
    }
    start, end = times.get(dg.DagsterEventType.STEP_START), times.get(dg.DagsterEventType.STEP_SUCCESS)
    return round(end - start, 1) if start and end else None


def sensor_ticks(instance: dg.DagsterInstance, name: str) -> list[Any]:
    states = [
        s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR) if s.instigator_name == name
    ]
    ticks = [t for s in states for t in instance.get_ticks(s.instigator_origin_id, s.selector_id)]
    return sorted(ticks, key=lambda t: t.timestamp)


def check_tick_gaps(ticks: list[Any], default: int) -> tuple[float, float]:
    """The shortest and longest gap between two ticks of a sensor: never below ``SENSOR_INTERVAL``
    (the minimum interval the code location set), and below the sensor's ``default`` at least once
    (the setting replaced it)."""
    gaps = [b.timestamp - a.timestamp for a, b in itertools.pairwise(ticks)]
    assert gaps and min(gaps) >= SENSOR_INTERVAL - 1 and min(gaps) < default, (SENSOR_INTERVAL, default, gaps)
    return round(min(gaps), 1), round(max(gaps), 1)


def finished(records: list[dg.RunRecord]) -> bool:
    return bool(records) and all(r.dagster_run.is_finished for r in records)


def materialized_after(
    instance: dg.DagsterInstance, keys: list[dg.AssetKey], after: float
) -> list[dg.RunRecord] | None:
    """The finished runs that last materialized ``keys``, once every key was materialized after
    ``after`` (such a run goes on with the asset checks after its materializations)."""
    run_ids = set()
    for key in keys:
        event = instance.get_latest_materialization_event(key)
        if event is None or event.timestamp <= after:
            return None
        run_ids.add(event.run_id)
    records = runs(instance, run_ids=sorted(run_ids))
    return records if finished(records) else None


def checks_passed(instance: dg.DagsterInstance, records: list[dg.RunRecord]) -> list[str]:
    """The asset checks the runs evaluated; every one must have passed."""
    evaluated = []
    for record in records:
        for entry in instance.all_logs(record.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
            evaluation = entry.dagster_event.event_specific_data
            assert evaluation.passed, (evaluation.check_name, evaluation.metadata)
            evaluated.append(evaluation.check_name)
    return sorted(evaluated)


def only_successes(instance: dg.DagsterInstance, records: list[dg.RunRecord]) -> None:
    failed = [r for r in records if r.dagster_run.status != dg.DagsterRunStatus.SUCCESS]
    assert not failed, "\n".join(
        f"{r.dagster_run.job_name} {r.dagster_run.run_id}: {r.dagster_run.status.value} "
        f"{failure_messages(instance, r.dagster_run.run_id)}"
        for r in failed
    )


# -- the test ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.s3
def test_multi_node_dagster_refreshes_an_s3_lake_and_survives_a_killed_worker(
    s3: S3Server, faulty_s3: FaultyS3, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    began = time.time()
    base = f"s3://{s3_bucket}/lake"
    storage = S3Storage(s3.settings())
    demo = write_demo_lake(tmp_path / "demo", with_legacy=True, flights_per_month=10).parent
    lake_dir = demo / "lake"
    raw_paths = put_lake(lake_dir, storage, base)
    expected, rows_per_file = expected_batches(lake_dir)
    config = tmp_path / "aperio.yaml"
    # the legacy single-node state stays on the old node's disk, found through legacyDirectory
    config.write_text(
        f"baseDirectory: {base}\nlegacyDirectory: {lake_dir / '.aperio'}\n"
        f"storage:\n  s3:\n    endpoint_url: {faulty_s3.endpoint_url}\n"  # (the test writes to S3 directly)
    )
    big = big_batch(lake_dir)
    # every batch of a schema is new, so the sensor requests ranges of BATCHES_PER_RUN of them
    batch_runs_wanted = sum(
        math.ceil(sum(len(b) for (s, _), b in expected.items() if s == schema) / BATCHES_PER_RUN)
        for schema in ("flights", "reference")
    )

    with postgres() as server:
        deploy = check_deploy_files(tmp_path, server, monkeypatch)
        scheme = deploy["event_log_storage"]["config"]["postgres_db"]["scheme"]
        postgres_url = re.sub(r"^postgresql://", f"{scheme}://", server.get_uri())
        home = tmp_path / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text(yaml.safe_dump(instance_config(deploy, postgres_url), sort_keys=False))
        workspace = home / "workspace.yaml"
        workspace.write_text(
            "load_from:\n  - python_module:\n      module_name: aperio_assets.definitions\n"
            "      location_name: aperio\n"
        )
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "APERIO_CONFIG": str(config),
            "APERIO_BATCHES_PER_RUN": str(BATCHES_PER_RUN),
            SENSOR_INTERVAL_ENV: str(SENSOR_INTERVAL),
            "DAGSTER_EVENT_BATCH_SIZE": "1000",  # as deploy/README.md sets it on every container
            # run_retries reacts to a failed run within a second (Dagster's event log consumer; default 5 s)
            "DAGSTER_EVENT_LOG_CONSUMER_DAEMON_INTERVAL_SECONDS": "1",
            "PYTHONWARNINGS": "ignore",
        }
        daemon = start_daemon(home, workspace, env)
        instance = None
        try:
            instance = dg.DagsterInstance.from_config(str(home))
            watch = Watch(instance, daemon, home / "daemon.log")
            proof = run_deployment(
                watch, instance, storage, env, home, workspace, daemon.pid, batch_runs_wanted, big, base, faulty_s3
            )
            # the big batch is part of the lake now
            expected[("flights", "flights")][canonical_key(BIG_PARTITION)] = (BIG_ROWS, BIG_ROWS)
            raw_paths += [f"{base}/{path}" for path in big]
            rows_per_file.update(dict.fromkeys(big, BIG_ROWS_PER_FILE))
            proof["lineage rows of files outside the lake (legacy)"] = check_end_state(
                config, base, storage, raw_paths, rows_per_file, expected, began
            )
        finally:
            stop_group(daemon)
            if instance is not None:
                instance.dispose()
    print(f"\ndeployment test: {time.time() - began:.0f} s; " + json.dumps(proof, indent=1, default=str))


def run_deployment(
    watch: Watch,
    instance: dg.DagsterInstance,
    storage: S3Storage,
    env: dict[str, str],
    home: Path,
    workspace: Path,
    daemon_pid: int,
    batch_runs_wanted: int,
    big: dict[str, bytes],
    base: str,
    faulty_s3: FaultyS3,
) -> dict[str, Any]:
    proof: dict[str, Any] = {}

    # 1. legacy_state_sensor (running by default) migrates the legacy state, once
    migration = watch.until(
        "the legacy migration run (legacy_state_sensor) to finish",
        lambda: (r := runs(instance, job_name="migrate_legacy_state_job")) and finished(r) and r,
        timeout=300,
    )
    only_successes(instance, migration)
    assert len(migration) == 1, [r.dagster_run.run_id for r in migration]
    assert migration[0].dagster_run.tags.get("dagster/run_key", "").endswith("-attempt-0")
    migration_end = migration[0].end_time or 0.0

    # 2. lake_change_sensor, started from the CLI against the same instance, requests the batch runs
    # a real process: the `dagster` CLI, as an operator runs it against the deployment
    # Every PUT of the first wave waits WAVE_PUT_LATENCY_MS (a run writes its lineage and status one
    # after the other): a batch run takes seconds, as on real S3, not the ~1.5 s a daemon launch
    # takes on this loopback, so that runs launched one after another overlap when they may.
    faulty_s3.proxy.set_faults(latency=1.0, latency_ms=WAVE_PUT_LATENCY_MS, methods=["PUT"])
    started = subprocess.run(
        [str(BIN / "dagster"), "sensor", "start", "lake_change_sensor", "-w", str(workspace)],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    tick = watch.until(
        "a lake_change_sensor tick that requests the batch runs",
        lambda: next(
            (t for t in sensor_ticks(instance, "lake_change_sensor") if t.run_ids and t.status != TickStatus.STARTED),
            None,
        ),
        timeout=300,
    )
    try:
        wave = watch.until(
            "the first wave of batch runs to finish",
            lambda: (r := runs(instance, run_ids=list(tick.run_ids))) and finished(r) and r,
            timeout=600,
        )
    finally:
        faulty_s3.proxy.faults_off()
    only_successes(instance, wave)
    assert len(wave) == batch_runs_wanted  # every batch, BATCHES_PER_RUN to a run
    assert {r.dagster_run.job_name for r in wave} == {"flights_batches_job", "reference_batches_job"}
    # in parallel: at least two runs overlapped, each in its own process
    spans = [(r.start_time or 0.0, r.end_time or 0.0, r.dagster_run.run_id) for r in wave]
    overlaps = [
        (a[2][:8], b[2][:8]) for i, a in enumerate(spans) for b in spans[i + 1 :] if a[0] < b[1] and b[0] < a[1]
    ]
    assert overlaps, f"no two batch runs overlapped: {spans}"
    pids = {r.dagster_run.run_id: worker_pid(instance, r.dagster_run.run_id) for r in wave}
    assert None not in pids.values() and len(set(pids.values())) == len(wave), pids
    assert daemon_pid not in pids.values()
    wave_end = max(r.end_time or 0.0 for r in wave)
    proof["first wave"] = {
        "runs": len(wave),
        "overlapping pairs": len(overlaps),
        "worker pids": sorted(pids.values()),
        "seconds": round(wave_end - min(s[0] for s in spans), 1),
    }

    # 3. aperio_automation_sensor runs the models and the views after the wave
    keys = [
        dg.AssetKey(["flights", "generated_model"]),
        dg.AssetKey(["reference", "generated_model"]),
        dg.AssetKey(["aperio", "catalog_views"]),
    ]
    after_wave = watch.until(
        "the models and views to be materialized after the batch runs (automation sensor)",
        lambda: materialized_after(instance, keys, wave_end),
        timeout=300,
    )
    only_successes(instance, after_wave)
    proof["catalog runs after the wave"] = {r.dagster_run.run_id: checks_passed(instance, [r]) for r in after_wave}

    # 4. the legacy sensor's later ticks skip: nothing left to migrate, still one migration run
    skipped = watch.until(
        "a legacy_state_sensor tick after the migration",
        lambda: [
            t
            for t in sensor_ticks(instance, "legacy_state_sensor")
            if t.timestamp > migration_end and t.status != TickStatus.STARTED
        ],
        timeout=180,
    )
    assert all(t.status == TickStatus.SKIPPED and not t.run_ids for t in skipped), [
        (t.status, t.skip_reason, t.run_ids) for t in skipped
    ]
    assert "no legacy state left to migrate" in (skipped[-1].skip_reason or "")
    assert len(runs(instance, job_name="migrate_legacy_state_job")) == 1

    # 5. a large new batch: its run worker is killed with SIGKILL while it converts. Its files are
    # written at most UPLOAD_WINDOW s after a lake_change_sensor tick began (the next begins
    # SENSOR_INTERVAL s after it at the earliest), so that one tick sees them all and requests one run
    # for the batch.
    def quiet() -> bool:
        ticks = sensor_ticks(instance, "lake_change_sensor")
        return (
            bool(ticks) and ticks[-1].status != TickStatus.STARTED and time.time() - ticks[-1].timestamp < UPLOAD_WINDOW
        )

    watch.until("a lake_change_sensor tick to have just finished", quiet, timeout=180, every=0.2)
    upload = time.time()
    for path, data in big.items():
        storage.write_bytes(f"{base}/{path}", data)
    written = time.time()
    during = [t.timestamp for t in sensor_ticks(instance, "lake_change_sensor") if t.timestamp >= upload]
    assert not [t for t in during if t <= written], (
        f"a lake_change_sensor tick began while the big batch was written ({upload:.1f}-{written:.1f}): {during}"
    )

    def converting() -> tuple[dg.RunRecord, int] | None:
        (record, *_) = runs(instance, job_name="flights_batches_job", tags={"dagster/partition": BIG_BATCH}) or [None]
        if record is None:
            return None
        assert not record.dagster_run.is_finished, (
            f"the run of {BIG_BATCH} finished ({record.dagster_run.status.value}) before it could be killed"
        )
        pid = worker_pid(instance, record.dagster_run.run_id)
        steps = instance.all_logs(record.dagster_run.run_id, of_type=dg.DagsterEventType.STEP_START)
        return (record, pid) if pid and steps else None

    record, pid = watch.until(
        f"the run of the new batch {BIG_BATCH} to start converting", converting, timeout=300, every=0.2
    )
    killed_id = record.dagster_run.run_id
    assert pid in descendants(daemon_pid), f"run worker pid {pid} is not a process of this test's daemon"
    steps = descendants(pid)  # its step processes (the multiprocess executor's children)
    for victim in [pid, *steps]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    in_progress = [e.step_key for e in instance.all_logs(killed_id, of_type=dg.DagsterEventType.STEP_START)]
    done = [e.step_key for e in instance.all_logs(killed_id, of_type=dg.DagsterEventType.STEP_SUCCESS)]
    assert in_progress == ["flights__batches"] and not done, (in_progress, done)  # killed converting
    failed = watch.until(
        "the killed run to be marked FAILED",
        lambda: (r := instance.get_run_record_by_id(killed_id)) and r.dagster_run.is_finished and r,
        timeout=300,
    )
    assert failed.dagster_run.status == dg.DagsterRunStatus.FAILURE, failed.dagster_run.status
    retry = watch.until(
        "the retry of the killed run (run_retries) to finish",
        lambda: (r := runs(instance, tags={"dagster/parent_run_id": killed_id})) and finished(r) and r,
        timeout=400,
    )
    only_successes(instance, retry)
    assert len(retry) == 1 and retry[0].dagster_run.tags.get("dagster/partition") == BIG_BATCH
    retry_end = retry[0].end_time or 0.0
    # only the flights schema changed: its model and the views run again
    after_retry = watch.until(
        "the flights model and the views to be materialized after the retry",
        lambda: materialized_after(instance, [keys[0], keys[2]], retry_end),
        timeout=300,
    )
    only_successes(instance, after_retry)
    # the batch was requested once (its run key), and run once more by run_retries alone
    assert [r.dagster_run.run_id for r in runs(instance, tags={"dagster/partition": BIG_BATCH})] == [
        killed_id,
        retry[0].dagster_run.run_id,
    ]
    assert not [
        r
        for r in runs(instance, job_name="flights_batches_job")
        if r.dagster_run.status == dg.DagsterRunStatus.FAILURE and r.dagster_run.run_id != killed_id
    ]
    # nothing left running (but the scheduled maintenance: the hourly compaction, which a test crossing
    # the hour may see, and the daily views)
    assert not [
        r
        for r in runs(instance)
        if not r.dagster_run.is_finished and r.dagster_run.job_name not in ("compact_state_job", "catalog_views_job")
    ]
    # 6. every sensor ticked at its interval: the code location's setting reached the daemon
    proof["sensor tick gaps (s)"] = {
        name: check_tick_gaps(sensor_ticks(instance, name), default)
        for name, default in (
            ("lake_change_sensor", LAKE_SENSOR_INTERVAL),
            ("legacy_state_sensor", LAKE_SENSOR_INTERVAL),
            ("aperio_automation_sensor", AUTOMATION_SENSOR_INTERVAL),
        )
    }
    proof["killed run"] = {
        "run": killed_id,
        "worker pid": pid,
        "step pids": steps,
        "steps started": in_progress,
        "written in (s)": round(written - upload, 1),
        "run started after (s)": round((failed.start_time or killed_at) - written, 1),
        "marked failed after (s)": round((failed.end_time or time.time()) - killed_at, 1),
        "why": failure_messages(instance, killed_id),
        "retry": retry[0].dagster_run.run_id,
        "retry worker pid": worker_pid(instance, retry[0].dagster_run.run_id),
        "retry converted in (s)": step_seconds(instance, retry[0].dagster_run.run_id, "flights__batches"),
        "catalog runs after the retry": {r.dagster_run.run_id: checks_passed(instance, [r]) for r in after_retry},
    }
    return proof


def check_end_state(
    config: Path,
    base: str,
    storage: S3Storage,
    raw_paths: list[str],
    rows_per_file: dict[str, int],
    expected: Expected,
    began: float,
) -> dict[str, Any]:
    """Through the library: every batch marked once by the runs, lineage complete, every view exact.
    Returns the lineage rows of files outside the lake (migrated from the legacy state)."""
    outside: dict[str, Any] = {}

    for (schema, table), batches in expected.items():
        rows = open_tracker(str(config), schema).status_rows(table)
        keys = [r["incremental_key_values"] for r in rows]
        assert sorted(keys) == sorted(batches), (schema, table, keys)  # every batch, once
        for row in rows:
            assert row["row_count"] == batches[row["incremental_key_values"]][0], (schema, table, row)
            assert not row["error_status"] and row["phase"] == "materialize", row
            assert row["processed_at"] >= began * 1000, row  # marked by this deployment's runs

    for schema in ("flights", "reference"):
        records = open_lineage(str(config), schema).records()
        mine = sorted(p for p in raw_paths if p.startswith(f"{base}/{schema}/"))
        assert sorted(p for p in records if p.startswith(f"{base}/")) == mine, sorted(records)
        outside[schema] = sorted(p for p in records if not p.startswith(f"{base}/"))
        for path in mine:
            record = records[path]
            assert record["error"] is None and record["row_count"] == rows_per_file[path.removeprefix(f"{base}/")], (
                record
            )
            assert storage.exists(record["target_path"]), record

    with connect(str(config)) as con:
        for (schema, table), batches in expected.items():
            count, distinct = con.execute(
                f'SELECT (SELECT count(*) FROM "{schema}"."{table}"), '
                f'(SELECT count(*) FROM (SELECT DISTINCT * FROM "{schema}"."{table}"))'
            ).fetchone()
            assert (count, distinct) == (sum(r for r, _ in batches.values()), sum(d for _, d in batches.values())), (
                schema,
                table,
            )
        big = con.execute(
            "SELECT count(*), count(DISTINCT flight) FROM flights.flights "
            f"WHERE CAST(year AS VARCHAR) = '{BIG_PARTITION['year']}' "
            f"AND CAST(month AS VARCHAR) IN ('{BIG_PARTITION['month']}', "
            f"'{int(BIG_PARTITION['month'])}')"
        ).fetchone()
        assert big == (BIG_ROWS, BIG_ROWS)
    return outside

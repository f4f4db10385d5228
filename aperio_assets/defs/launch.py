"""A full refresh of the lake as Dagster runs, without the daemon:
``python -m aperio_assets.defs.launch [--config PATH] [--workers N] [--log-level LEVEL]`` (what
``make run`` does).

It does what ``lake_change_sensor`` and ``aperio_automation_sensor`` do in a deployment, at once:
registers every schema's batches as partitions (removing vanished ones), runs the batch runs (a
range of up to ``BATCHES_PER_RUN`` batches each; a failed batch is tried again, as ``aperio refresh``
does), ``N`` runs at a time: this process and ``N - 1`` worker processes (forked from a fork server
that imported Dagster and the code location once) each take the next run until none is left, each
run in-process where it is taken, on the same instance (``$DAGSTER_HOME``); then
``aperio_catalog_job`` once: the models, the views and the checks.
Every run is recorded in the instance, as the UI shows it; its console log shows INFO and above
(``--log-level``), as ``make run``'s ``dagster job execute -c run-config.yaml`` does.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import dagster as dg
from dagster._serdes import serialize_value

from aperio_assets.config import find_config_path
from aperio_assets.definitions import batch_partition_events, build_defs
from aperio_assets.defs.partitions import batches_partitions
from aperio_assets.defs.resources import AperioResource
from aperio_assets.defs.sensors import CATALOG_JOB, plan_schema
from aperio_assets.processes import worker_context, worker_pool


@dataclass
class LaunchResult:
    runs: list[tuple[str, str, bool]] = field(default_factory=list)  # (job, partition or range, success)
    batches_added: int = 0
    batches_removed: int = 0
    # the results of the runs this process executed (all of them with one worker; with more, its share
    # and the catalog run): their events, for a caller to read
    results: list[dg.ExecuteInProcessResult] = field(default_factory=list)

    @property
    def failed(self) -> list[tuple[str, str, bool]]:
        return [r for r in self.runs if not r[2]]


@functools.cache
def _definitions(config_path: str) -> dg.Definitions:
    # Once per process (this one, and each worker for all the runs it executes): importing the code
    # location builds nothing (its ``defs`` is lazy), so this is the only build.
    return build_defs(config_path, AperioResource(config_path=config_path))


# What a batch run imports, imported once by the fork server: this module (Dagster, the code
# location), the PostgreSQL instance storage, the S3 client (and botocore's S3 data), and Arrow
# datasets with pandas (pyarrow imports pandas when handed Python values: every state write does).
# (By name, not ``__name__``: run as ``python -m`` that is ``__main__``, which a fork server does not
# import for a module run that way. It skips a name that cannot be imported.)
PRELOAD = [
    "aperio_assets.defs.launch",
    "aperio_assets.instance.postgres",
    "s3fs",
    "aperio_assets.storage.s3_preload",
    "pyarrow.dataset",
]


def _worker_pool(context: BaseContext, workers: int, next_run: Synchronized[int] | None = None) -> ProcessPoolExecutor:
    """``workers`` processes for batch runs, each with the caller's environment and directory, and
    ``next_run``: the index of the next run request not taken yet (shared with the caller: see
    ``_share_runs``)."""
    return worker_pool(context, workers, _keep_next_run, (next_run,))


_NEXT_RUN: Synchronized[int] | None = None  # (in a worker: its pool's ``next_run``)


def _keep_next_run(next_run: Synchronized[int] | None) -> None:
    global _NEXT_RUN
    _NEXT_RUN = next_run


RunRequestTuple = tuple[str, str | None, dict[str, str]]  # (job, partition key, tags)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# At DEBUG, Dagster's console logger prints the runs' events as they happen (~2 lines a batch); the
# instance's event log keeps every event whatever the console shows.
DEFAULT_LOG_LEVEL = "INFO"


def console_log_config(log_level: str) -> dict[str, Any]:
    """A run config that sets the console logger's level, as ``run-config.yaml`` does."""
    if log_level.upper() not in LOG_LEVELS:
        raise ValueError(f"unknown log level {log_level!r} (one of {', '.join(LOG_LEVELS)})")
    return {"loggers": {"console": {"config": {"log_level": log_level.upper()}}}}


def _take(next_run: Synchronized[int], count: int) -> int | None:
    """The index of the next of ``count`` run requests, taken (by one process only), or None."""
    with next_run.get_lock():
        index = next_run.value
        if index >= count:
            return None
        next_run.value = index + 1
    return index


def _share_runs(
    context: BaseContext,
    slots: int,
    requests: Sequence[RunRequestTuple],
    config_path: str,
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    result: LaunchResult,
    run_config: dict[str, Any],
) -> list[bool]:
    """Each request's outcome, in order, ``slots`` runs at a time: this process and ``slots - 1``
    workers each take the next request not taken yet until none is left. This process starts at
    once (it is warm); a worker starts when it is forked and has built its definitions, ~2-3 s later
    (the fork server's imports first). No request waits queued for a busy worker."""
    next_run = context.Value("i", 0)
    ref = instance.get_ref()
    pool = _worker_pool(context, slots - 1, next_run)
    # (in the background: the first submit waits for the fork server's imports, while this process runs)
    starter = ThreadPoolExecutor(1, thread_name_prefix="aperio-run-workers")
    share_call = (_run_share, config_path, ref, requests, run_config)
    started = starter.submit(lambda: [pool.submit(*share_call) for _ in range(slots - 1)])
    try:
        outcomes: dict[int, bool] = {}
        while (index := _take(next_run, len(requests))) is not None:
            outcomes[index] = _run_here(defs, instance, requests[index], result, run_config)
        # Workers took the rest, or started after all was taken (their shares are empty; a failure to
        # start them is raised here). Unless they are not started yet: then this process ran it all.
        if len(outcomes) < len(requests) or started.done():
            for share in started.result():
                outcomes.update(share.result())
    except BaseException:
        with next_run.get_lock():
            next_run.value = len(requests)  # (the workers take no further run)
        raise
    finally:
        # Every run has ended (its result is in): the workers' exit, an interpreter's teardown each
        # (~0.5 s of CPU), goes on while the catalog run starts. By the starter, after its submits:
        # while one waits for the fork server, it holds the pool's lock that a shutdown takes.
        starter.submit(pool.shutdown, wait=False, cancel_futures=True)
        starter.shutdown(wait=False)
    return [outcomes[index] for index in range(len(requests))]


def _run_share(
    config_path: str, instance_ref: dg.InstanceRef, requests: Sequence[RunRequestTuple], run_config: dict[str, Any]
) -> dict[int, bool]:
    """In a worker: run the next request not taken yet, until none is left; their outcomes by index."""
    if _NEXT_RUN is None:
        raise RuntimeError("a worker without its pool's run counter")
    outcomes: dict[int, bool] = {}
    while (index := _take(_NEXT_RUN, len(requests))) is not None:
        outcomes[index] = _execute(config_path, instance_ref, requests[index], run_config)
    return outcomes


def _run_here(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    request: RunRequestTuple,
    result: LaunchResult,
    run_config: dict[str, Any],
) -> bool:
    run = _execute_run(defs, instance, request, run_config)
    result.results.append(run)
    return run.success


def _execute(
    config_path: str, instance_ref: dg.InstanceRef | None, request: RunRequestTuple, run_config: dict[str, Any]
) -> bool:
    """In a worker: ``request`` run on the worker's definitions and instance."""
    if instance_ref is None:
        raise ValueError("the instance has no reference worker processes can open")
    return _execute_run(_definitions(config_path), _worker_instance(instance_ref), request, run_config).success


def _execute_run(
    defs: dg.Definitions, instance: dg.DagsterInstance, request: RunRequestTuple, run_config: dict[str, Any]
) -> dg.ExecuteInProcessResult:
    job, partition_key, tags = request
    job_def = defs.resolve_job_def(job)
    if partition_key and job_def.partitioned_config:  # (a run config given replaces the partition's own)
        run_config = {**job_def.partitioned_config.get_run_config_for_partition_key(partition_key), **run_config}
    return job_def.execute_in_process(
        run_config=run_config, instance=instance, partition_key=partition_key, tags=tags, raise_on_error=False
    )


_WORKER_INSTANCES: dict[str, dg.DagsterInstance] = {}


def _worker_instance(ref: dg.InstanceRef) -> dg.DagsterInstance:
    """The worker's instance for ``ref``, opened by its first run and kept for the next ones (as one
    process running every run keeps its own): opening one connects each storage and checks its
    tables. It goes with the worker process."""
    key = serialize_value(ref)
    if key not in _WORKER_INSTANCES:
        _WORKER_INSTANCES[key] = dg.DagsterInstance.from_ref(ref)
    return _WORKER_INSTANCES[key]


def refresh_with_runs(
    config_path: str | None = None,
    workers: int = 1,
    instance: dg.DagsterInstance | None = None,
    log_level: str = DEFAULT_LOG_LEVEL,
) -> LaunchResult:
    """Refresh the lake at ``config_path`` as Dagster runs on ``instance`` (default: the one in
    ``$DAGSTER_HOME``, else a temporary one), ``workers`` batch runs at a time; the runs' console
    log shows ``log_level`` and above."""
    run_config = console_log_config(log_level)
    config = str(find_config_path(config_path).resolve())
    batch_partition_events()  # (before the runs are created: their planned events; workers get it too)
    # (first: the fork server imports while this process builds its definitions and plans the runs)
    context = worker_context(PRELOAD) if workers > 1 else None
    defs = _definitions(config)
    owned = instance is None
    if instance is None:  # $DAGSTER_HOME's, or (none set) a temporary one that the runs share
        instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.local_temp()
    result = LaunchResult()
    try:
        lake = AperioResource(config_path=config).lake()
        requests: list[RunRequestTuple] = []
        for schema in lake.schemas():
            partitions = batches_partitions(schema.name)
            plan = plan_schema(lake, schema, instance.get_dynamic_partitions(partitions.name), retry_failed=True)
            if plan.changes.added:
                instance.add_dynamic_partitions(partitions.name, plan.changes.added)
            for key in plan.changes.removed:
                instance.delete_dynamic_partition(partitions.name, key)
            result.batches_added += len(plan.changes.added)
            result.batches_removed += len(plan.changes.removed)
            requests += [(r.job_name, r.partition_key, dict(r.tags)) for r in plan.runs if r.job_name]
        if context is not None and len(requests) > 1:
            slots = min(workers, len(requests))
            outcomes = _share_runs(context, slots, requests, config, defs, instance, result, run_config)
        else:
            outcomes = [_run_here(defs, instance, request, result, run_config) for request in requests]
        result.runs = [
            (
                job,
                key
                or f"{tags.get('dagster/asset_partition_range_start')}..."
                f"{tags.get('dagster/asset_partition_range_end')}",
                ok,
            )
            for (job, key, tags), ok in zip(requests, outcomes, strict=True)
        ]
        catalog = _execute_run(defs, instance, (CATALOG_JOB, None, {}), run_config)
        result.results.append(catalog)
        result.runs.append((CATALOG_JOB, "", catalog.success))
    finally:
        if owned:
            instance.dispose()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aperio_assets.defs.launch", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="aperio.yaml (default: $APERIO_CONFIG, else ./aperio.yaml)")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="batch runs at a time (default: the number of cores)"
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=DEFAULT_LOG_LEVEL,
        help=f"the runs' console log shows this level and above (default: {DEFAULT_LOG_LEVEL}; the instance's "
        "event log keeps every event)",
    )
    args = parser.parse_args(argv)
    result = refresh_with_runs(args.config, max(1, args.workers), log_level=args.log_level)
    batch_runs = [r for r in result.runs if r[0] != CATALOG_JOB]
    print(
        f"aperio: {len(batch_runs)} batch run(s) ({result.batches_added} batch(es) registered, "
        f"{result.batches_removed} removed), then {CATALOG_JOB}; {len(result.failed)} failed"
    )
    for job, what, _ in result.failed:
        print(f"aperio: failed run: {job} {what}", file=sys.stderr)
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())

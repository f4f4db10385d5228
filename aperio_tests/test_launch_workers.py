"""The launcher's worker processes (``python -m aperio_assets.defs.launch --workers N``): forked from
a fork server that imported the code location once, each takes the caller's environment and
working directory as they are when its pool is made, not as they were when the fork server started;
and a process's run Lakes share their state tables only for the same configuration."""

from __future__ import annotations

import multiprocessing
import os
import threading
import types
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from aperio_assets.defs import launch
from aperio_assets.defs.resources import _run_lake
from aperio_assets.state.access import schema_table
from aperio_assets.state.tables import PARTITION_STATUS


def test_workers_take_the_callers_environment_not_the_fork_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = launch.worker_context(launch.PRELOAD)
    monkeypatch.setenv("APERIO_TEST_WORKER_MARK", "before")
    with launch._worker_pool(context, 1, None) as pool:  # the fork server is running from here on
        assert pool.submit(os.getenv, "APERIO_TEST_WORKER_MARK").result() == "before"
    monkeypatch.setenv("APERIO_TEST_WORKER_MARK", "after")
    monkeypatch.chdir(tmp_path)
    with launch._worker_pool(context, 2, None) as pool:
        assert pool.submit(os.getenv, "APERIO_TEST_WORKER_MARK").result() == "after"
        assert Path(pool.submit(os.getcwd).result()) == tmp_path
        # forked from the fork server, which imported the launcher (and with it Dagster) already
        assert pool.submit(_imported, "dagster").result() is True
    if "forkserver" in __import__("multiprocessing").get_all_start_methods():
        assert context.get_start_method() == "forkserver"


def _imported(name: str) -> bool:
    import sys

    return name in sys.modules


def test_a_later_run_takes_the_state_tables_of_the_last_run_on_the_same_configuration(tmp_path: Path) -> None:
    (tmp_path / "lake" / "sales").mkdir(parents=True)
    first, other = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("baseDirectory: lake\n")
    other.write_text("baseDirectory: lake\ncompaction:\n  max_small_files: 7\n")
    one = _run_lake("run-1", str(first))
    table = schema_table(one, "sales", PARTITION_STATUS)
    two = _run_lake("run-2", str(first))
    assert two is not one and schema_table(two, "sales", PARTITION_STATUS) is table  # files read once
    assert _run_lake("run-2", str(first)) is two  # one Lake per run
    three = _run_lake("run-3", str(other))  # another configuration: tables of its own
    assert schema_table(three, "sales", PARTITION_STATUS) is not table
    first.write_text("baseDirectory: lake\ncompaction:\n  max_small_files: 9\n")  # the file changed
    four = _run_lake("run-4", str(first))
    assert schema_table(four, "sales", PARTITION_STATUS) is not table


class _WaitingPool:
    """A worker pool whose every submit waits until released, as the first one waits while the fork
    server imports."""

    def __init__(self) -> None:
        self.release, self.shut = threading.Event(), threading.Event()
        self.submitted: list[Any] = []
        self.arguments: list[tuple[Any, ...]] = []

    def submit(self, fn: Any, *args: Any) -> Future[dict[int, bool]]:
        assert self.release.wait(60)
        self.submitted.append(fn)
        self.arguments.append(args)
        share: Future[dict[int, bool]] = Future()
        share.set_result({})  # (every request was taken already)
        return share

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        self.shut.set()


def test_this_process_runs_what_its_workers_have_not_taken_and_does_not_wait_for_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = _WaitingPool()
    monkeypatch.setattr(launch, "_worker_pool", lambda context, workers, next_run: pool)
    ran: list[str | None] = []
    monkeypatch.setattr(
        launch, "_run_here", lambda defs, instance, request, result, run_config: ran.append(request[1]) or True
    )
    requests = [("sales_batches_job", f"p{i}", {}) for i in range(3)]
    instance: Any = types.SimpleNamespace(get_ref=lambda: None)
    context = multiprocessing.get_context("spawn")  # (for the shared counter only: no process starts)
    run_config = launch.console_log_config("warning")
    outcomes = launch._share_runs(
        context, 4, requests, "aperio.yaml", None, instance, launch.LaunchResult(), run_config
    )
    assert outcomes == [True, True, True] and ran == ["p0", "p1", "p2"]  # all here, in order
    assert not pool.shut.is_set() and pool.submitted == []  # returned without waiting for the workers
    pool.release.set()
    assert pool.shut.wait(60)  # the pool is shut once its workers' submits are through
    assert pool.submitted == [launch._run_share] * 3
    # each worker's share runs with the caller's run config: its console log level
    assert [args[-1] for args in pool.arguments] == [{"loggers": {"console": {"config": {"log_level": "WARNING"}}}}] * 3


def test_when_this_process_fails_the_workers_take_no_further_run(monkeypatch: pytest.MonkeyPatch) -> None:
    pool, counters = _WaitingPool(), []
    pool.release.set()
    monkeypatch.setattr(launch, "_worker_pool", lambda context, workers, next_run: counters.append(next_run) or pool)

    def broken(defs: Any, instance: Any, request: Any, result: Any, run_config: Any) -> bool:
        raise RuntimeError("the instance went away")

    monkeypatch.setattr(launch, "_run_here", broken)
    requests = [("sales_batches_job", f"p{i}", {}) for i in range(5)]
    instance: Any = types.SimpleNamespace(get_ref=lambda: None)
    with pytest.raises(RuntimeError, match="went away"):
        launch._share_runs(
            multiprocessing.get_context("spawn"), 3, requests, "aperio.yaml", None, instance, launch.LaunchResult(), {}
        )
    assert counters[0].value == 5  # every request counts as taken: a worker's next _take gets none
    assert launch._take(counters[0], 5) is None


def test_an_unknown_console_log_level_is_refused() -> None:
    assert launch.console_log_config("info") == {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        launch.console_log_config("loud")
    with pytest.raises(SystemExit) as usage:  # (argparse: before anything runs)
        launch.main(["--log-level", "loud"])
    assert usage.value.code == 2

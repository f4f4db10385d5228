"""Worker processes for aperio's parallel work: the CLI's conversion workers (``aperio refresh
--workers N``), the launcher's batch-run workers, the benchmarks' writers.

They are forked from a fork server, a new interpreter that imported what they need once (``preload``):
a worker costs a fork, not an interpreter start and its imports (0.5-2 s of CPU each). Never a fork
of the caller itself, which may hold threads (DuckDB, the S3 event loop) that a fork would copy
mid-flight. The fork server keeps the environment and working directory of when it started, so each
worker takes the caller's first. A process has one fork server, preloaded by the first caller that
starts it; another caller's workers import what it did not preload themselves. Where a platform has
no fork server (not Linux or macOS), workers are spawned.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import forkserver
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any


def worker_context(preload: Sequence[str]) -> BaseContext:
    """The context worker processes start from, its fork server started now (it imports ``preload``
    in the background while the caller goes on; a name that cannot be imported is skipped)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))  # (taken by the first fork server a process starts)
    forkserver.ensure_running()
    return context


def stop_fork_server(wait: float = 60.0) -> bool:
    """Stop this process's fork server, if one runs; the next ``worker_context`` starts a new one,
    which imports its preload again. For a measurement whose every run must start its workers as a
    command run afresh does (``aperio bench --scale-out``), not from the fork server an earlier run
    left. A server's workers hold it open, so its stop waits for them: this first waits up to
    ``wait`` seconds for the processes it forked for this process to exit, and leaves the server as
    it is if one is still running. Whether one was stopped (False: none ran, a worker is still
    running, or this Python lacks the stdlib's own stop, ``ForkServer._stop``, there for its tests;
    the 3.11 used here has it)."""
    stop = getattr(_stdlib_fork_server(), "_stop", None)
    if stop is None or not fork_server_running():
        return False
    deadline = time.monotonic() + wait
    for child in _forked_children():
        child.join(max(0.0, deadline - time.monotonic()))
    if _forked_children():
        return False
    stop()
    return True


def fork_server_running() -> bool:
    """Whether this process has a fork server running (the stdlib's, which records its pid)."""
    return getattr(_stdlib_fork_server(), "_forkserver_pid", None) is not None


def _stdlib_fork_server() -> object | None:
    """The stdlib's one fork server object of this process (``multiprocessing.forkserver``'s)."""
    return getattr(forkserver, "_forkserver", None)


def _forked_children() -> list[BaseProcess]:
    """This process's worker processes forked from its fork server, still running (not the other
    children: a spawned proxy, say, runs as long as its caller wants)."""
    return [c for c in multiprocessing.active_children() if getattr(c, "_start_method", None) == "forkserver"]


def worker_pool(
    context: BaseContext,
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
) -> ProcessPoolExecutor:
    """``workers`` processes from ``context``, each with the caller's environment and working
    directory, then ``initializer(*initargs)``."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_adopt,
        initargs=(dict(os.environ), os.getcwd(), initializer, initargs),
    )


def worker_process(
    context: BaseContext, target: Callable[..., object], args: tuple[Any, ...] = (), daemon: bool | None = None
) -> BaseProcess:
    """A process (not started) from ``context`` that runs ``target(*args)`` with the caller's
    environment and working directory."""
    return context.Process(  # type: ignore[attr-defined]
        target=_run_adopted, args=(dict(os.environ), os.getcwd(), target, args), daemon=daemon
    )


def _adopt(
    environment: dict[str, str],
    directory: str,
    then: Callable[..., None] | None = None,
    args: tuple[Any, ...] = (),
) -> None:
    os.environ.clear()
    os.environ.update(environment)
    os.chdir(directory)
    if then is not None:
        then(*args)


def _run_adopted(
    environment: dict[str, str], directory: str, target: Callable[..., object], args: tuple[Any, ...]
) -> None:
    _adopt(environment, directory)
    target(*args)

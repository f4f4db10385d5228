"""Worker processes (``aperio_assets.processes``): real operating-system processes forked from a fork
server, each with the caller's environment and working directory as they are when it is made, not as
they were when the fork server started."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aperio_assets.processes import worker_context, worker_pool, worker_process


def _report(path: str) -> None:
    Path(path).write_text(
        "\n".join([os.environ.get("APERIO_TEST_WORKER_MARK", "-"), os.getcwd(), str(os.getpid()), str(os.getppid())])
    )


def _sleep_forever() -> None:
    while True:
        time.sleep(1)


def _in_a_fresh_interpreter(script: str) -> str:
    """What ``script`` prints, run by a new interpreter (this pytest process may have started its
    fork server already)."""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _lines_with_a_fork_server(script: str, count: int) -> list[str]:
    """The first ``count`` lines ``script`` prints in a fresh interpreter; skipped where the platform
    has no fork server to stop (Linux, where CI runs, has one)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork server on this platform")
    return _in_a_fresh_interpreter(script).split("\n")[:count]


def test_a_worker_process_takes_the_callers_environment_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = worker_context(["json"])
    monkeypatch.setenv("APERIO_TEST_WORKER_MARK", "after the fork server started")
    monkeypatch.chdir(tmp_path)
    process = worker_process(context, _report, (str(tmp_path / "report"),))
    process.start()
    process.join(timeout=120)
    assert process.exitcode == 0
    mark, directory, pid, parent = (tmp_path / "report").read_text().split("\n")
    assert mark == "after the fork server started" and Path(directory) == tmp_path
    assert int(pid) == process.pid and int(pid) != os.getpid()
    if "forkserver" in multiprocessing.get_all_start_methods():
        assert int(parent) != os.getpid()  # the fork server's child, not this process's fork
    # a pool's workers too
    monkeypatch.setenv("APERIO_TEST_WORKER_MARK", "pool")
    with worker_pool(context, 2) as pool:
        assert pool.submit(os.getenv, "APERIO_TEST_WORKER_MARK").result() == "pool"
        assert Path(pool.submit(os.getcwd).result()) == tmp_path


def test_a_killed_worker_process_reports_its_signal() -> None:
    process = worker_process(worker_context(["json"]), _sleep_forever)
    process.start()
    os.kill(process.pid, signal.SIGKILL)
    process.join(timeout=60)
    assert process.exitcode == -signal.SIGKILL


def test_the_first_fork_server_of_a_process_takes_the_preload() -> None:
    # (in a fresh interpreter: this pytest process may have started its fork server already)
    script = (
        "import multiprocessing, sys\n"
        "from aperio_assets.processes import worker_context, worker_pool\n"
        "context = worker_context(['aperio_assets.state'])\n"
        "with worker_pool(context, 1) as pool:\n"
        "    print(pool.submit(eval, \"'aperio_assets.state' in __import__('sys').modules\").result())\n"
    )
    printed = _in_a_fresh_interpreter(script)
    assert printed.strip() == ("True" if "forkserver" in multiprocessing.get_all_start_methods() else "False")


def test_a_stopped_fork_server_is_started_again_with_the_next_preload() -> None:
    # (in a fresh interpreter, as above) what `aperio bench --scale-out` does between its runs
    script = (
        "import os, sys\n"
        "from aperio_assets.processes import stop_fork_server, worker_context, worker_pool\n"
        "def served(preload, module):\n"
        "    probe = f\"(__import__('os').getppid(), {module!r} in __import__('sys').modules)\"\n"
        "    with worker_pool(worker_context(preload), 1) as pool:\n"
        "        return pool.submit(eval, probe).result()\n"
        "print(stop_fork_server())\n"
        "first = served(['json'], 'aperio_assets.state')\n"
        "print(stop_fork_server())\n"
        "second = served(['aperio_assets.state'], 'aperio_assets.state')\n"
        "print(first[0] != second[0], first[1], second[1])\n"
    )
    # none ran; the first was stopped; the second is another server, which preloaded what it was asked
    assert _lines_with_a_fork_server(script, 3) == ["False", "True", "True False True"]


def test_a_fork_server_whose_worker_still_runs_is_not_stopped() -> None:
    # (a server's workers hold it open: stopping it would wait for them; other children do not count)
    script = (
        "import multiprocessing, time\n"
        "from aperio_assets.processes import stop_fork_server, worker_context, worker_pool\n"
        "other = multiprocessing.get_context('spawn').Process(target=time.sleep, args=(60,), daemon=True)\n"
        "other.start()\n"
        "pool = worker_pool(worker_context(['json']), 1)\n"
        "busy = pool.submit(time.sleep, 3)\n"
        "time.sleep(0.5)\n"
        "print(stop_fork_server(wait=0.5))\n"
        "busy.result()\n"
        "pool.shutdown(wait=False)\n"
        "print(stop_fork_server(wait=60), other.is_alive())\n"
        "other.terminate()\n"
    )
    # kept while its worker slept; stopped once the pool was done, the spawned child left running
    assert _lines_with_a_fork_server(script, 2) == ["False", "True True"]

"""`aperio bench --scale-out`: every storage, mode and worker count is a row, with exact counts and the
state compared with the 1-worker run's; a mismatch or a missing Dagster launcher is reported, never
hidden (speed itself is never asserted: the figures live in docs/BENCHMARKS.md). The runs here are
the smoke size (``--smoke``: no untimed warm-up refresh), which makes every row and check."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from aperio_assets import layout
from aperio_assets.bench import scaleout
from aperio_assets.cli import main
from aperio_assets.lake import open_lake
from aperio_assets.state.access import open_state

PNG = b"\x89PNG\r\n\x1a\n"


def _scale_out(png: Path, capsys: pytest.CaptureFixture[str], *options: str) -> tuple[int, list[dict]]:
    """``aperio bench --scale-out PNG`` of a 20-batch lake at the smoke size, with ``options``: its
    exit code and its JSON rows."""
    code = main(["bench", "--scale-out", str(png), "--batches", "20", *options, "--smoke", "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_scale_out_reports_every_run_with_the_same_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "scaleout.png"
    code, rows = _scale_out(
        png, capsys, "--worker-counts", "2,1", "--modes", "cli", "--s3-latency", "2", "--storage", "s3"
    )
    assert code == 0, rows
    # (local disk's cli rows are the next two tests')
    assert [(r["storage"], r["mode"], r["workers"]) for r in rows] == [("s3", "cli", 1), ("s3", "cli", 2)]
    for r in rows:
        assert set(r) == {
            "storage",
            "mode",
            "workers",
            "seconds",
            "speedup",
            "files",
            "batches",
            "same_state",
            "requests",
            "note",
            "round",
        }
        assert r["round"] == 1  # one round: no medians
        assert (r["files"], r["batches"]) == (20, 20)  # 19 partitions of `events` and one top-level table
        assert r["same_state"] is True and r["note"] is None, r
        assert r["seconds"] > 0 and r["speedup"] > 0
        assert (r["requests"] is None) == (r["storage"] == "local")
    assert [r["speedup"] for r in rows if r["workers"] == 1] == [1.0]
    assert all(r["requests"] >= 40 for r in rows if r["storage"] == "s3")  # at least a GET and a PUT per file
    assert png.read_bytes()[:8] == PNG


def test_a_mismatch_and_a_missing_launcher_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the Dagster launcher cannot be imported (whether or not it exists yet)
    monkeypatch.setitem(sys.modules, "aperio_assets.defs.launch", None)
    real = scaleout._run_cli

    def tampered(config_path: str, workers: int) -> tuple[int, int]:
        counted = real(config_path, workers)
        if workers == 2:  # one lineage row says something the 1-worker run's does not
            access = open_state(open_lake(config_path), "bench", layout.CONVERSIONS)
            row = dict(access.rows()[0])
            access.apply([{**row, "row_count": 999}])
        return counted

    monkeypatch.setattr(scaleout, "_run_cli", tampered)
    png = tmp_path / "scaleout.png"
    code, rows = _scale_out(png, capsys, "--worker-counts", "1,2", "--storage", "local")
    assert code == 1
    assert [(r["storage"], r["mode"], r["workers"]) for r in rows] == [
        ("local", "cli", 1),
        ("local", "cli", 2),
        ("local", "dagster", None),
    ]
    one, two, dagster = rows
    assert one["same_state"] is True
    assert two["same_state"] is False
    assert two["note"] == "lineage: 1 row(s) not in the 1-worker state, 1 missing"
    assert dagster["same_state"] is None and dagster["seconds"] is None
    assert dagster["note"].startswith("not available: ") and "aperio_assets.defs.launch" in dagster["note"]
    assert png.read_bytes()[:8] == PNG


def test_lake_size_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    files = scaleout.lake_files(1000)
    assert len(files) == 1000
    assert sum(1 for p in files if p.startswith("bench/events/day=")) == 950
    assert len(scaleout.lake_files(20)) == 20 and len(scaleout.lake_files(1)) == 1
    for argv, message in (
        (["--worker-counts", "2,4"], "include 1"),
        (["--modes", "cli,airflow"], "airflow"),
        (["--batches", "0"], "--batches"),
    ):
        with pytest.raises(SystemExit) as usage:
            main(["bench", "--scale-out", "x.png", *argv])
        assert usage.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("instance", ["sqlite", "postgres"])
def test_dagster_runs_leave_the_state_the_library_call_leaves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, instance: str
) -> None:
    from aperio_assets.defs import launch

    storages: list[str] = []
    real = launch.refresh_with_runs

    def recording(config_path, workers, instance):
        storages.append(type(instance.run_storage).__name__)
        return real(config_path, workers, instance=instance)

    monkeypatch.setattr(launch, "refresh_with_runs", recording)
    png = tmp_path / "scaleout.png"
    code, rows = _scale_out(
        png,
        capsys,
        "--worker-counts",
        "1,2",
        "--storage",
        "local",
        "--modes",
        "cli,dagster",
        "--dagster-instance",
        instance,
    )
    assert code == 0, rows
    # every Dagster run on a new instance of the kind asked for (PostgreSQL: a server of its own)
    # (PostgreSQL: aperio's storages, as deploy/dagster.yaml names them)
    assert storages == [{"sqlite": "SqliteRunStorage", "postgres": "PooledPostgresRunStorage"}[instance]] * 2
    assert [(r["mode"], r["workers"]) for r in rows] == [("cli", 1), ("cli", 2), ("dagster", 1), ("dagster", 2)]
    # the Dagster rows are compared with the library call's 1-worker state
    assert all(r["same_state"] is True and (r["files"], r["batches"]) == (20, 20) for r in rows), rows
    assert all(r["requests"] is None for r in rows)  # local disk: no S3 requests to count


def test_rounds_interleave_the_worker_counts_and_pair_each_run_with_its_rounds_1_worker_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "scaleout.png"
    code, rows = _scale_out(
        png, capsys, "--worker-counts", "1,2", "--modes", "cli", "--storage", "local", "--repetitions", "3"
    )
    assert code == 0, rows
    # odd rounds count up, even rounds down; then the medians (round None)
    assert [(r["round"], r["workers"]) for r in rows] == [
        (1, 1),
        (1, 2),
        (2, 2),
        (2, 1),
        (3, 1),
        (3, 2),
        (None, 1),
        (None, 2),
    ]
    runs, medians = rows[:6], rows[6:]
    assert all(r["same_state"] is True and (r["files"], r["batches"]) == (20, 20) for r in rows), rows
    for r in runs:  # each run over its own round's 1-worker run
        (one,) = [o for o in runs if o["round"] == r["round"] and o["workers"] == 1]
        assert r["speedup"] == round(one["seconds"] / r["seconds"], 2)
    for m in medians:
        mine = sorted(r["speedup"] for r in runs if r["workers"] == m["workers"])
        assert m["speedup"] == mine[1]  # the middle of three
        assert m["seconds"] == sorted(r["seconds"] for r in runs if r["workers"] == m["workers"])[1]
        assert m["note"] == f"median of 3 round(s), speed-ups {mine[0]:.2f}-{mine[-1]:.2f}"
    assert png.read_bytes()[:8] == PNG


def test_every_run_starts_its_workers_from_a_fork_server_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[int] = []
    real = scaleout._run_cli

    def stopped() -> bool:
        calls.append(len(refreshed))
        return True

    refreshed: list[int] = []

    def counting(config_path: str, workers: int) -> tuple[int, int]:
        refreshed.append(workers)
        return real(config_path, workers)

    monkeypatch.setattr(scaleout, "stop_fork_server", stopped)
    monkeypatch.setattr(scaleout, "_run_cli", counting)
    code, rows = _scale_out(
        tmp_path / "s.png",
        capsys,
        "--worker-counts",
        "1,2",
        "--modes",
        "cli",
        "--storage",
        "local",
        "--repetitions",
        "2",
    )
    assert code == 0, rows
    # before each of the four runs, before its refresh: [1, 2, 2, 1] were refreshed in that order
    assert refreshed == [1, 2, 2, 1] and calls == [0, 1, 2, 3]
    assert all(r["note"] is None for r in rows if r["round"] is not None)


def test_a_run_that_had_to_keep_the_fork_server_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(scaleout, "stop_fork_server", lambda: False)
    monkeypatch.setattr(scaleout, "fork_server_running", lambda: True)  # (an earlier run's worker still ran)
    code, rows = _scale_out(
        tmp_path / "s.png", capsys, "--worker-counts", "1,2", "--modes", "cli", "--storage", "local"
    )
    assert code == 0, rows
    assert [r["note"] for r in rows] == ["an earlier run's worker was still running: its fork server was kept"] * 2


def test_the_medians_say_how_many_rounds_failed() -> None:
    def row(round_: int, workers: int, seconds: float | None) -> scaleout.ScaleOutRow:
        return scaleout.ScaleOutRow(
            "s3", "dagster", workers, seconds, None, 20, 20, seconds is not None, 50, None, round_
        )

    rows = scaleout._with_speedups(
        [row(1, 1, 60.0), row(1, 4, 20.0), row(2, 4, 30.0), row(2, 1, 90.0), row(3, 1, 70.0), row(3, 4, None)],
        [1, 4],
        3,
    )
    assert [r.speedup for r in rows[:6]] == [1.0, 3.0, 3.0, 1.0, 1.0, None]
    one, four = rows[6:]
    assert (one.seconds, one.speedup, one.same_state) == (70.0, 1.0, True)
    assert (four.seconds, four.speedup, four.same_state) == (25.0, 3.0, False)
    assert four.note == "median of 2 round(s), speed-ups 3.00-3.00; 1 round(s) failed"


def test_a_1_worker_run_whose_state_could_not_be_read_is_no_reference() -> None:
    unread = scaleout.ScaleOutRow("s3", "cli", 1, 60.0, None, None, None, False, 50, "state not readable: x", 1)
    four = scaleout.ScaleOutRow("s3", "cli", 4, 20.0, None, 20, 20, True, 50, None, 1)
    assert [r.speedup for r in scaleout._with_speedups([unread, four], [1, 4], 1)] == [None, None]

"""Truth under S3 faults: writer processes and a compaction loop talk to the loopback S3 through a
fault-injecting proxy (503 SlowDown, 500, connection resets, answers lost after S3 committed the
request, latency). Then, with the faults off, every call is accounted for: what returned is there,
what raised was not applied unless the error said it might have been, `doctor` is clean, and a refresh
repeated under faults until it succeeds equals a refresh that never met one."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from aperio_assets.catalog import connect
from aperio_assets.config import CompactionSettings, S3Settings
from aperio_assets.conversion.refresh import refresh
from aperio_assets.errors import AperioError, WriteOutcomeUnknown
from aperio_assets.lake import open_lake
from aperio_assets.processes import worker_process
from aperio_assets.state import ParquetPartitionStatusStore, open_lineage, open_tracker
from aperio_assets.state.maintenance import compact_lake, doctor
from aperio_assets.storage import S3Storage
from aperio_tests.helpers import process_context

SCHEMA = "sales"
# About one request in ten meets a fault; lost answers only on writes (where they matter).
FAULTS = {"slowdown": 0.03, "error500": 0.02, "reset": 0.02, "lost_answer": 0.04}
FAULT_KINDS = ("slowdown", "error500", "reset", "lost_answer", "latency")
# The refresh test takes one try per request, so that faults reach the refresh; at this rate some of
# its runs fail and a repeated run gets through (a run makes about 40 requests).
REFRESH_FAULTS = {"slowdown": 0.015, "error500": 0.01, "reset": 0.01, "lost_answer": 0.02}


# A tombstone may be dropped only once no compaction that read the deleted row before the tombstone
# existed can still land its output: the retention must outlast the slowest compaction (DESIGN §5;
# the default is 7 days). With 0, a writer's opportunistic compaction slowed by a loaded machine (CI
# under xdist) once landed after the tombstone was dropped and brought an invalidated key back.
# 10 s still lets the compaction loop drop tombstones during the test.
TOMBSTONE_RETENTION_SECONDS = 10


def _tracker(endpoint: str, root: str, attempts: int) -> ParquetPartitionStatusStore:
    storage = S3Storage(S3Settings(endpoint_url=endpoint, max_attempts=attempts), aperio_root=root)
    compaction = CompactionSettings(
        max_small_files=6, tombstone_retention_seconds=TOMBSTONE_RETENTION_SECONDS, grace_period_seconds=0
    )
    return ParquetPartitionStatusStore(storage, SCHEMA, compaction)


def _call(log: list[dict[str, Any]], op: str, keys: list[str], call) -> str:
    """Run one tracker call and record how it ended: ok, unknown (the error says it may have been
    applied) or error (anything else aperio raised)."""
    try:
        call()
        outcome, message = "ok", None
    except WriteOutcomeUnknown as exc:
        outcome, message = "unknown", str(exc)
    except AperioError as exc:
        outcome, message = "error", f"{type(exc).__name__}: {exc}"
    log.append({"op": op, "keys": keys, "outcome": outcome, "message": message})
    return outcome


def _writer(endpoint: str, root: str, me: int, count: int, out: str) -> None:
    """Marks its own keys (single marks and batches of three) and invalidates some it marked. Two
    tries per request (not six) so that faults reach the caller and the error paths are exercised."""
    tracker = _tracker(endpoint, root, attempts=2)
    alternate = f"w{me}"
    log: list[dict[str, Any]] = []
    for i in range(count):
        if i % 4 == 3:
            keys = [f"{i}.{j}" for j in range(3)]
            _call(
                log,
                "mark",
                keys,
                lambda keys=keys: tracker.mark_many(
                    [
                        {"alternate": alternate, "source_table": "t", "key_values": {"k": k}, "row_count": 1}
                        for k in keys
                    ]
                ),
            )
        else:
            keys = [str(i)]
            outcome = _call(
                log, "mark", keys, lambda i=i: tracker.mark_processed(alternate, "t", {"k": str(i)}, row_count=1)
            )
            if i % 4 == 1 and outcome == "ok":
                _call(log, "invalidate", keys, lambda i=i: tracker.invalidate(alternate, {"k": str(i)}))
    Path(out).write_text(json.dumps(log))


def _compactor(endpoint: str, root: str, stop, out: str) -> None:
    tracker = _tracker(endpoint, root, attempts=2)
    log: list[dict[str, Any]] = []
    deadline = time.monotonic() + 300
    while not stop.is_set() and time.monotonic() < deadline:
        _call(log, "compact", [], tracker.compact)
        time.sleep(0.02)
    Path(out).write_text(json.dumps(log))


def expected_state(log: list[dict[str, Any]]) -> tuple[set[str], set[str], set[str]]:
    """From one writer's log: keys that must be present, keys that must be absent, keys either way
    (a call whose error said it may have been applied)."""
    present, absent, either = set(), set(), set()
    for entry in log:
        for key in entry["keys"]:
            for group in (present, absent, either):
                group.discard(key)
            if entry["outcome"] == "unknown":
                either.add(key)
            elif (entry["op"] == "mark") == (entry["outcome"] == "ok"):
                present.add(key)  # a mark that returned, or an invalidation that did not happen
            else:
                absent.add(key)  # a mark that raised, or an invalidation that returned
    return present, absent, either


@pytest.mark.slow
def test_writers_and_a_compactor_through_faults_tell_the_truth(faulty_s3, s3_bucket: str, tmp_path) -> None:
    writers, count = 3, 40
    root = f"s3://{s3_bucket}/lake/.aperio"
    faulty_s3.proxy.set_faults(**FAULTS, latency=0.05, latency_ms=(1, 15))
    ctx = process_context()
    stop = ctx.Event()
    logs = [tmp_path / f"writer-{n}.json" for n in range(writers)]
    procs = [
        worker_process(ctx, _writer, (faulty_s3.endpoint_url, root, n, count, str(logs[n]))) for n in range(writers)
    ]
    compactor_log = tmp_path / "compactor.json"
    compactor = worker_process(ctx, _compactor, (faulty_s3.endpoint_url, root, stop, str(compactor_log)))
    for p in [*procs, compactor]:
        p.start()
    for p in procs:
        p.join(timeout=600)
        assert p.exitcode == 0
    stop.set()
    compactor.join(timeout=120)
    assert compactor.exitcode == 0
    faulty_s3.proxy.faults_off()
    injected = faulty_s3.proxy.counts()

    # every kind of fault happened, lost answers to create-if-absent PUTs among them
    assert all(injected.get(kind, 0) > 0 for kind in FAULT_KINDS), injected
    assert injected.get("lost_answer:PUT", 0) > 0, injected

    entries = [e for path in logs for e in json.loads(path.read_text())]
    compactions = json.loads(compactor_log.read_text())
    assert sum(1 for e in compactions if e["outcome"] == "ok") > 0
    for entry in [*entries, *compactions]:
        assert "collide" not in (entry["message"] or ""), entry  # a lost answer is never a collision
        if entry["outcome"] == "unknown":
            assert "may or may not" in entry["message"], entry
    outcomes = {o: sum(1 for e in entries if e["outcome"] == o) for o in ("ok", "unknown", "error")}
    print(f"calls: {outcomes}; compactions: {len(compactions)}; injected: {injected}")
    acknowledged = outcomes["ok"]
    assert acknowledged >= len(entries) * 0.6, (acknowledged, len(entries))

    # faults off, straight to the server: every call accounted for, by fresh readers
    reader = _tracker(faulty_s3.upstream_url, root, attempts=6)
    for n in range(writers):
        present, absent, either = expected_state(json.loads(logs[n].read_text()))
        stored = {kv["k"] for kv in reader.get_processed_key_values(f"w{n}")}
        assert present <= stored, ("acknowledged writes missing", present - stored)
        assert not (absent & stored), ("a call that raised had been applied", absent & stored)
        assert stored <= present | either, stored - present - either
    reader.compact()
    assert reader.status.stats().bad_files == {}
    config = tmp_path / "aperio.yaml"
    config.write_text(
        f"baseDirectory: s3://{s3_bucket}/lake\n"
        f"storage:\n  s3:\n    endpoint_url: {faulty_s3.upstream_url}\n"
        f"schemas:\n  - name: {SCHEMA}\n    directory: {SCHEMA}\n"
    )
    report = doctor(open_lake(config))
    assert report.problems == [], report.to_dict()


def _seed(storage: S3Storage, base: str) -> None:
    """A small raw lake: top-level files, a partitioned folder, two files in one partition."""
    files = {
        "customers.csv": b"id,name\n1,Ann\n2,Bob\n3,Cy\n",
        "events.jsonl": b'{"e": 1}\n{"e": 2}\n',
        "regions.tsv": b"code\tname\nN\tNorth\nS\tSouth\n",
    }
    for month in ("01", "02", "03", "04", "05", "06", "07", "08"):
        files[f"orders/year=2024/month={month}/part-0.csv"] = (
            "id,amount\n" + "".join(f"{i},{i * int(month)}\n" for i in range(5))
        ).encode()
    files["orders/year=2024/month=04/part-1.csv"] = b"id,amount\n99,1\n"
    for relative, data in files.items():
        storage.write_bytes(f"{base}/{SCHEMA}/{relative}", data)


def _lake_config(tmp_path: Path, name: str, endpoint: str, base: str, attempts: int) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"baseDirectory: {base}\nstorage:\n  s3:\n    endpoint_url: {endpoint}\n"
        f"    max_attempts: {attempts}\ncompaction:\n  grace_period: 0s\n"
    )
    return path


def _outcome(config: Path, base: str) -> dict[str, Any]:
    """What a refresh left, with the lake's own prefix taken out of every path."""
    lake = open_lake(config)
    strip = lambda path: path.replace(base, "<lake>") if path else path  # noqa: E731
    lineage = sorted(
        (strip(r["source_path"]), strip(r["target_path"]), r["row_count"], r["error"])
        for r in open_lineage(lake, SCHEMA).records().values()
    )
    status = sorted(
        (
            r["alternate_name"],
            r["incremental_key_values"],
            r["row_count"],
            strip(r["target_pattern"]),
            r["error_status"],
        )
        for r in open_tracker(lake, SCHEMA).status.rows()
    )
    con = connect(lake)
    names = [
        n
        for (n,) in con.execute(
            "SELECT view_name FROM duckdb_views() WHERE schema_name = ? AND NOT internal ORDER BY 1", [SCHEMA]
        ).fetchall()
    ]
    tables = {name: sorted(con.execute(f'SELECT * FROM {SCHEMA}."{name}"').fetchall(), key=repr) for name in names}
    assert len(tables) == 4, names
    return {"lineage": lineage, "status": status, "tables": tables}


@pytest.mark.slow
def test_a_refresh_repeated_under_faults_equals_a_clean_refresh(faulty_s3, s3_bucket: str, tmp_path) -> None:
    direct = S3Storage(S3Settings(endpoint_url=faulty_s3.upstream_url))
    clean_base, faulty_base = f"s3://{s3_bucket}/clean", f"s3://{s3_bucket}/faulty"
    _seed(direct, clean_base)
    _seed(direct, faulty_base)
    clean = _lake_config(tmp_path, "clean", faulty_s3.upstream_url, clean_base, attempts=6)
    faulty = _lake_config(tmp_path, "faulty", faulty_s3.endpoint_url, faulty_base, attempts=1)
    (result,) = refresh(open_lake(clean))
    assert not result.failed_files

    faulty_s3.proxy.set_faults(**REFRESH_FAULTS)
    tries, errors = 0, []
    for tries in range(1, 101):  # noqa: B007 - the count is reported below
        try:
            (result,) = refresh(open_lake(faulty))
        except AperioError as exc:
            errors.append(str(exc))
            continue
        if not result.failed_files:
            break
        errors.extend(f"{f.source}: {f.error}" for f in result.failed_files)
    else:
        pytest.fail(f"no refresh succeeded in {tries} tries under faults: {errors[-3:]}")
    faulty_s3.proxy.faults_off()
    print(f"refresh succeeded on try {tries}; before it: {errors}; injected: {faulty_s3.proxy.counts()}")
    assert sum(faulty_s3.proxy.counts().get(kind, 0) for kind in REFRESH_FAULTS) > 0
    compact_lake(open_lake(faulty))
    assert _outcome(faulty, faulty_base) == _outcome(clean, clean_base)
    report = doctor(open_lake(faulty))
    assert report.problems == [], report.to_dict()

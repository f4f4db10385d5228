"""The storage provider contract, on local disk and on the loopback S3 server."""

from __future__ import annotations

import time

import pytest

from aperio_assets.errors import LocationNotFound
from aperio_assets.processes import worker_process
from aperio_tests.helpers import StorageCase, process_context


def test_write_read_and_replace(storage_case: StorageCase) -> None:
    p = storage_case.provider
    path = p.join(storage_case.root, "a", "b.bin")
    p.write_bytes(path, b"one")
    assert p.read_bytes(path) == b"one"
    p.write_bytes(path, b"two, longer")
    assert p.read_bytes(path) == b"two, longer"
    info = p.info(path)
    assert info is not None and info.size == len(b"two, longer") and info.name == "b.bin"
    assert abs(info.mtime - time.time()) < 300


def test_missing_files(storage_case: StorageCase) -> None:
    p = storage_case.provider
    missing = p.join(storage_case.root, "nope", "x.parquet")
    assert p.info(missing) is None
    assert not p.exists(missing)
    with pytest.raises(FileNotFoundError):
        p.read_bytes(missing)
    assert p.list(p.join(storage_case.root, "nope")) == []
    p.delete(missing)  # deleting what is gone is fine


def test_create_if_absent_never_overwrites(storage_case: StorageCase) -> None:
    p = storage_case.provider
    path = p.join(storage_case.root, "state", "f.parquet")
    assert p.create_if_absent(path, b"first") is True
    assert p.create_if_absent(path, b"second") is False
    assert p.read_bytes(path) == b"first"
    assert [e.name for e in p.list(p.join(storage_case.root, "state"))] == ["f.parquet"]


def test_list_sizes_dirs_and_etags(storage_case: StorageCase) -> None:
    p = storage_case.provider
    root = storage_case.root
    p.write_bytes(p.join(root, "t", "x=1", "a.csv"), b"12345")
    p.write_bytes(p.join(root, "t", "x=2", "b.csv"), b"1234567")
    p.write_bytes(p.join(root, "t", "top.csv"), b"1")

    shallow = p.list(p.join(root, "t"))
    assert [(e.name, e.is_dir) for e in shallow] == [("top.csv", False), ("x=1", True), ("x=2", True)]
    deep = p.list(p.join(root, "t"), recursive=True)
    assert [(e.path[len(root) :], e.size) for e in deep] == [
        ("/t/top.csv", 1),
        ("/t/x=1/a.csv", 5),
        ("/t/x=2/b.csv", 7),
    ]
    assert all(not e.is_dir for e in deep)
    if storage_case.kind == "s3":
        import hashlib

        assert deep[1].etag == hashlib.md5(b"12345").hexdigest()
    else:
        assert deep[1].etag is None


def test_a_slice_of_a_recursive_listing(storage_case: StorageCase) -> None:
    """``after``/``upto`` give the files of the full listing that sort after one path and not after
    the other, whatever the bounds: at a file, between files, a prefix of one, outside them all."""
    p = storage_case.provider
    t = p.join(storage_case.root, "t")
    names = ["a.csv", "d=1/x.csv", "d=1/y.csv", "d=10/x.csv", "d=2/x.csv", "d=2/z/x.csv", "e/x.csv", "top.csv"]
    for name in names:
        p.write_bytes(p.join(t, *name.split("/")), b"1")
    everything = [e.path for e in p.list(t, recursive=True)]
    assert everything == sorted(everything) and len(everything) == len(names)
    at = dict(zip(names, everything, strict=True))
    bounds = [
        None,
        at["a.csv"],
        at["d=1/y.csv"],
        at["d=1/x.csv"][:-1],  # just before a file: its path less its last character
        at["d=2/x.csv"],
        p.join(t, "d=2"),  # a folder: a prefix of its files
        at["top.csv"],
        p.join(t, "zzz"),
        p.join(storage_case.root, "s"),  # before the folder
    ]
    for after in bounds:
        for upto in bounds:
            got = [e.path for e in p.list(t, recursive=True, after=after, upto=upto)]
            expected = [x for x in everything if (after is None or x > after) and (upto is None or x <= upto)]
            assert got == expected, (after, upto)
    # the page-size hint changes no result, however wrong: 40 more files, listed 17 to a page
    for i in range(40):
        p.write_bytes(p.join(t, "many", f"{i:02d}.csv"), b"1")
    everything = [e.path for e in p.list(t, recursive=True)]
    after, upto = p.join(t, "d=2"), p.join(t, "zzz")
    expected = [x for x in everything if after < x <= upto]
    assert len(expected) == 44
    for expect in (None, 0, 1, 44, 5000):
        assert [e.path for e in p.list(t, recursive=True, after=after, upto=upto, expect=expect)] == expected
    # a non-recursive listing ignores the bounds
    assert [e.name for e in p.list(t, after=at["top.csv"])] == ["a.csv", "d=1", "d=10", "d=2", "e", "many", "top.csv"]


def test_listing_is_never_stale(storage_case: StorageCase) -> None:
    """Another worker's write is visible to the next LIST at once (no listing cache)."""
    p, other = storage_case.provider, storage_case.new_provider()
    d = p.join(storage_case.root, "fresh")
    assert p.list(d) == []
    other.write_bytes(p.join(d, "1.parquet"), b"x")
    assert [e.name for e in p.list(d)] == ["1.parquet"]
    other.delete(p.join(d, "1.parquet"))
    assert p.list(d) == []


def test_delete_and_move(storage_case: StorageCase) -> None:
    p = storage_case.provider
    src = p.join(storage_case.root, "d", "bad.parquet")
    dst = p.join(storage_case.root, "_quarantine", "bad.parquet")
    p.write_bytes(src, b"junk")
    p.move(src, dst)
    assert not p.exists(src) and p.read_bytes(dst) == b"junk"
    p.delete(dst)
    assert not p.exists(dst)


def test_delete_many(storage_case: StorageCase) -> None:
    """Many files in few requests (S3: DeleteObjects, 1,000 keys each); gone files are no error."""
    p = storage_case.provider
    paths = [p.join(storage_case.root, "many", f"f{i:04d}") for i in range(1003)]
    keep = p.join(storage_case.root, "many", "keep")
    for path in [*paths[:20], keep]:
        p.write_bytes(path, b"x")
    p.counters.reset()
    p.delete_many(paths)  # 20 exist, 983 never did
    assert [f.path for f in p.list(p.join(storage_case.root, "many"))] == [keep]
    if storage_case.kind == "s3":
        assert p.counters.snapshot()["DELETE"] == 2


def test_aperio_path(storage_case: StorageCase) -> None:
    p = storage_case.provider
    root = storage_case.root
    assert p.aperio_path("flights", "partition_status") == p.join(root, ".aperio", "flights", "partition_status")
    assert p.aperio_path(None, "catalog/views") == p.join(root, ".aperio", "catalog", "views")
    with pytest.raises(ValueError):
        p.aperio_path("flights", "../../etc")


def test_request_counters(storage_case: StorageCase) -> None:
    p = storage_case.provider
    p.counters.reset()
    path = p.join(storage_case.root, "c", "f")
    p.write_bytes(path, b"1")
    p.create_if_absent(p.join(storage_case.root, "c", "g"), b"1")
    p.read_bytes(path)
    p.list(p.join(storage_case.root, "c"))
    p.info(path)
    p.delete(path)
    assert p.counters.snapshot() == {"PUT": 2, "GET": 1, "LIST": 1, "DELETE": 1, "HEAD": 1}


def test_check_missing_location(storage_case: StorageCase) -> None:
    p = storage_case.provider
    if storage_case.kind == "s3":
        with pytest.raises(LocationNotFound, match="bucket 'no-such-bucket' does not exist at http://"):
            p.check("s3://no-such-bucket/lake")
    else:
        with pytest.raises(LocationNotFound, match="does not exist"):
            p.check(p.join(storage_case.root, "missing-dir"))
    p.write_bytes(p.join(storage_case.root, "here", "f"), b"1")
    p.check(storage_case.root)


# -- the create-if-absent race, with operating-system processes ------------------------------------


def _race_worker(kind: str, endpoint: str | None, path: str, me: int, barrier, results) -> None:
    from aperio_assets.config import S3Settings
    from aperio_assets.storage import LocalStorage, S3Storage

    provider = S3Storage(S3Settings(endpoint_url=endpoint)) if kind == "s3" else LocalStorage()
    payload = f"writer-{me}:".encode() + bytes([me]) * 200_000
    if kind == "s3":
        provider.list(path.rsplit("/", 1)[0])  # warm the connection so the PUTs really overlap
    barrier.wait(timeout=60)
    results.put((me, provider.create_if_absent(path, payload)))


@pytest.mark.slow
def test_create_if_absent_race_between_processes(storage_case: StorageCase) -> None:
    n = 8
    ctx = process_context()
    barrier, results = ctx.Barrier(n), ctx.Queue()
    p = storage_case.provider
    path = p.join(storage_case.root, "race", "one-name.parquet")
    endpoint = storage_case.s3.endpoint_url if storage_case.s3 else None
    procs = [
        worker_process(ctx, _race_worker, (storage_case.kind, endpoint, path, i, barrier, results)) for i in range(n)
    ]
    for proc in procs:
        proc.start()
    outcome = dict(results.get(timeout=120) for _ in range(n))
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    winners = [me for me, won in outcome.items() if won]
    assert len(winners) == 1, outcome
    (winner,) = winners
    assert p.read_bytes(path) == f"writer-{winner}:".encode() + bytes([winner]) * 200_000
    # none of the losers' bytes (or temp files) are visible anywhere
    assert [e.name for e in p.list(p.join(storage_case.root, "race"), recursive=True)] == ["one-name.parquet"]


def test_download_and_upload_stream_files(storage_case: StorageCase, tmp_path) -> None:
    p = storage_case.provider
    local = tmp_path / "big.bin"
    payload = bytes(range(256)) * 40_000  # 10 MB
    local.write_bytes(payload)
    target = p.join(storage_case.root, "tables", "t", "big.parquet")
    p.upload(str(local), target)
    assert p.info(target).size == len(payload)
    back = tmp_path / "back.bin"
    p.download(target, str(back))
    assert back.read_bytes() == payload
    with pytest.raises(FileNotFoundError):
        p.download(p.join(storage_case.root, "missing"), str(tmp_path / "x"))
    assert (p.local_path(target) == target) is (storage_case.kind == "local")


def test_s3_storages_share_a_client_per_settings_and_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """S3Storages (a Lake each: each Dagster run's) with the same settings, under the same
    credentials environment, share one filesystem (one client, one connection pool) in a process;
    other settings or other credentials get their own. Every session shares the process's data
    loader: botocore's endpoint and S3 files are parsed once per process. A listing's ISO timestamps
    and a header's HTTP date parse to the same instant."""
    import datetime

    from aperio_assets.config import S3Settings
    from aperio_assets.storage import S3Storage
    from aperio_assets.storage.s3 import _aio_session, _timestamp

    first, second = _aio_session(), _aio_session()
    assert first is not second
    assert first.get_component("data_loader") is second.get_component("data_loader")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "one")
    settings = S3Settings(endpoint_url="http://127.0.0.1:9")
    shared = S3Storage(settings).fs
    assert shared.session.get_component("data_loader") is first.get_component("data_loader")
    assert S3Storage(S3Settings(endpoint_url="http://127.0.0.1:9")).fs is shared
    assert S3Storage(S3Settings(endpoint_url="http://127.0.0.1:10")).fs is not shared
    assert S3Storage(S3Settings(endpoint_url="http://127.0.0.1:9", region="eu-west-1")).fs is not shared
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "two")
    other = S3Storage(settings).fs
    assert other is not shared
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "one")
    assert S3Storage(settings).fs is shared
    utc = datetime.UTC
    expected = datetime.datetime(2026, 11, 30, 16, 42, 16, tzinfo=utc)
    assert _timestamp("2026-11-30T16:42:16.000Z") == expected
    assert _timestamp("Mon, 30 Nov 2026 16:42:16 GMT") == expected
    assert _timestamp("2026-11-30T16:42:16.250+01:00") == expected.replace(hour=15, microsecond=250_000)

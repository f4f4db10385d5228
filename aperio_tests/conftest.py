"""Shared fixtures: isolation from the machine's AWS settings, one loopback S3 server (moto) per
pytest process (each xdist worker has its own), and storage, tracker and lake fixtures parametrized
over local disk and S3. Every test that reaches the loopback S3 is marked ``s3`` here, so that
``-m s3`` and ``-m "not s3"`` select by it. The cases themselves are in ``helpers.py``."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from aperio_assets.storage import LocalStorage, S3Storage
from aperio_tests.helpers import (
    TEST_CREDENTIALS,
    FaultyS3,
    LakeCase,
    S3Server,
    StorageCase,
    TrackerCase,
    free_port,
)

# The fixtures below whose given value makes a test use the loopback S3 (direct or indirect parametrization).
S3_PARAMS = {"storage_case": "s3", "tracker_case": "shared-s3", "lake_case": "s3"}
LONGEST_MODULE = "test_deployment.py"  # the suite's longest test by far: it starts first


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``s3`` every test that needs the loopback server: through a fixture that depends on
    ``s3_server``, or through the S3 value of a parametrized storage, tracker or lake fixture (those
    take the server with ``getfixturevalue``, which the static fixture closure does not show).
    Then order for xdist (`make test`: ``--dist load --maxschedchunk 1``, each worker takes the next
    test when it is free): the deployment test first (minutes, mostly waiting on sensor ticks), then
    the other ``slow`` tests, then the rest, each group in its own order; the short tests fill the
    workers around the long ones, instead of one long test starting late and ending the run."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        uses_s3 = "s3_server" in getattr(item, "fixturenames", ()) or any(
            params.get(name) == value for name, value in S3_PARAMS.items()
        )
        if uses_s3 and item.get_closest_marker("s3") is None:
            item.add_marker(pytest.mark.s3)
    items.sort(key=_schedule_rank)  # stable: each group keeps its order


def _schedule_rank(item: pytest.Item) -> int:
    if item.path.name == LONGEST_MODULE:
        return 0
    return 1 if item.get_closest_marker("slow") is not None else 2


@pytest.fixture(autouse=True)
def isolated_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Strip AWS_* and APERIO_* and point the HOME-based AWS config at nothing: credentials reach
    aperio only through what a test sets. Each test gets its own catalog cache and Dagster home."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "APERIO_")):
            monkeypatch.delenv(name)
    empty = tmp_path_factory.getbasetemp() / "no-aws-config"
    # each test gets its own catalog cache (a cache hit across tests would hide a binding cost or bug)
    monkeypatch.setenv("APERIO_CACHE_DIR", str(tmp_path_factory.mktemp("catalog-cache")))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # an empty Dagster home of the test's own, never `make test`'s, which other tests and xdist workers share
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path_factory.mktemp("dagster-home")))


@pytest.fixture(autouse=True)
def no_dagster_state_storage_of_an_earlier_test() -> Iterator[None]:
    """Dagster keeps the defs-state storage of the instance last entered in a context variable, which
    loading definitions reads. An instance an earlier test entered, gone with its files and left
    there (its ``__exit__`` never reset it), must not reach this test: it starts with none."""
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    with set_defs_state_storage(None):
        yield


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One real S3 protocol server on loopback for the session: one per xdist worker, on a free port (reset
    between tests; bucket names are unique anyway)."""
    from moto.server import ThreadedMotoServer

    from aperio_assets.bench.s3server import lighten_moto

    lighten_moto()  # (as the bench's: no per-request listing of moto's own package, no request log)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The loopback server, emptied, with test credentials in the standard AWS variables."""
    s3_server.reset()
    for name, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def s3_bucket(s3: S3Server) -> str:
    bucket = f"aperio-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    return bucket


@pytest.fixture(params=["local", "s3"])
def storage_case(request: pytest.FixtureRequest, tmp_path) -> StorageCase:
    if request.param == "local":
        root = str(tmp_path / "root")
        os.makedirs(root)
        return StorageCase("local", root, LocalStorage(aperio_root=f"{root}/.aperio"))
    s3: S3Server = request.getfixturevalue("s3")
    bucket = request.getfixturevalue("s3_bucket")
    root = f"s3://{bucket}/lake"
    return StorageCase("s3", root, S3Storage(s3.settings(), aperio_root=f"{root}/.aperio"), s3)


@pytest.fixture(params=["duckdb", "shared-local", "shared-s3"])
def tracker_case(request: pytest.FixtureRequest, tmp_path) -> TrackerCase:
    if request.param == "duckdb":
        return TrackerCase("duckdb", None, str(tmp_path / ".aperio" / "sales" / ".partition_status.duckdb"))
    if request.param == "shared-local":
        return TrackerCase("shared-local", LocalStorage(aperio_root=str(tmp_path / ".aperio")), None)
    s3: S3Server = request.getfixturevalue("s3")
    bucket = request.getfixturevalue("s3_bucket")
    return TrackerCase("shared-s3", S3Storage(s3.settings(), aperio_root=f"s3://{bucket}/.aperio"), None)


@pytest.fixture(params=["local", "s3"])
def lake_case(request: pytest.FixtureRequest, tmp_path) -> LakeCase:
    config = tmp_path / "aperio.yaml"
    if request.param == "local":
        (tmp_path / "lake" / "sales").mkdir(parents=True)
        (tmp_path / "lake" / "sales" / "orders.csv").write_text("id\n1\n")
        config.write_text("baseDirectory: lake\ncompaction:\n  max_small_files: 3\n")
        return LakeCase("local", str(config), str(tmp_path / "lake"))
    s3: S3Server = request.getfixturevalue("s3")
    bucket = request.getfixturevalue("s3_bucket")
    S3Storage(s3.settings()).write_bytes(f"s3://{bucket}/lake/sales/orders.csv", b"id\n1\n")
    config.write_text(
        f"baseDirectory: s3://{bucket}/lake\ncompaction:\n  max_small_files: 3\n"
        f"storage:\n  s3:\n    endpoint_url: {s3.endpoint_url}\n"
    )
    return LakeCase("s3", str(config), f"s3://{bucket}/lake")


@pytest.fixture
def faulty_s3(s3: S3Server) -> Iterator[FaultyS3]:
    """A fault-injecting proxy in front of the (emptied) loopback S3, faults off until a test sets them."""
    from aperio_assets.bench.faultproxy import FaultProxy

    with FaultProxy(s3.endpoint_url, seed=12) as proxy:
        yield FaultyS3(proxy, s3.endpoint_url)

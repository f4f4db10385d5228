"""Shared fixtures: isolation from the machine's AWS settings, one loopback S3 server (moto), and a
storage fixture parametrized over local disk and S3."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from aperio_assets.config import S3Settings
from aperio_assets.storage import LocalStorage, S3Storage, StorageProvider

TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "aperio-test-key",
    "AWS_SECRET_ACCESS_KEY": "aperio-test-secret",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def isolated_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Strip AWS_* and point the HOME-based AWS config at nothing: credentials reach aperio only
    through what a test sets."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "APERIO_")):
            monkeypatch.delenv(name)
    empty = tmp_path_factory.getbasetemp() / "no-aws-config"
    # each test gets its own catalog cache (a cache hit across tests would hide a binding cost or bug)
    monkeypatch.setenv("APERIO_CACHE_DIR", str(tmp_path_factory.mktemp("catalog-cache")))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


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


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One real S3 protocol server on loopback for the whole session (reset between tests)."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
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


@dataclass
class TrackerCase:
    """A way to open trackers on one schema's state: ``duckdb`` (local mode), ``shared-local``,
    ``shared-s3``. Each ``open()`` is a new, independent instance (a fresh reader or worker)."""

    kind: str
    storage: StorageProvider | None
    duckdb_path: str | None

    def open(self, **kwargs):
        from aperio_assets.state import DuckDBPartitionStatusStore, ParquetPartitionStatusStore

        if self.kind == "duckdb":
            return DuckDBPartitionStatusStore(self.duckdb_path)
        assert self.storage is not None
        return ParquetPartitionStatusStore(self.storage, "sales", **kwargs)


@pytest.fixture(params=["duckdb", "shared-local", "shared-s3"])
def tracker_case(request: pytest.FixtureRequest, tmp_path) -> TrackerCase:
    if request.param == "duckdb":
        return TrackerCase("duckdb", None, str(tmp_path / ".aperio" / "sales" / ".partition_status.duckdb"))
    if request.param == "shared-local":
        return TrackerCase("shared-local", LocalStorage(aperio_root=str(tmp_path / ".aperio")), None)
    s3: S3Server = request.getfixturevalue("s3")
    bucket = request.getfixturevalue("s3_bucket")
    return TrackerCase("shared-s3", S3Storage(s3.settings(), aperio_root=f"s3://{bucket}/.aperio"), None)


@dataclass
class LakeCase:
    """A configured lake with one schema folder ``sales``, on local disk or in the loopback S3."""

    kind: str
    config_path: str
    base: str

    def lake(self):
        from aperio_assets.lake import open_lake

        return open_lake(self.config_path)


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


@pytest.fixture
def faulty_s3(s3: S3Server) -> Iterator[FaultyS3]:
    """A fault-injecting proxy in front of the (emptied) loopback S3, faults off until a test sets them."""
    from aperio_assets.bench.faultproxy import FaultProxy

    with FaultProxy(s3.endpoint_url, seed=12) as proxy:
        yield FaultyS3(proxy, s3.endpoint_url)

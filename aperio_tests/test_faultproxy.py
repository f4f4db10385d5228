"""The fault-injecting proxy: each fault as a client sees it, and faithful forwarding otherwise."""

from __future__ import annotations

import io

import boto3
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aperio_assets.errors import StorageUnavailable, WriteOutcomeUnknown
from aperio_assets.storage import S3Storage
from aperio_tests.helpers import TEST_CREDENTIALS


def _direct(faulty_s3):
    return boto3.client(
        "s3",
        endpoint_url=faulty_s3.upstream_url,
        region_name="us-east-1",
        aws_access_key_id=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def test_forwards_every_kind_of_request_faithfully(faulty_s3, s3_bucket: str, tmp_path) -> None:
    storage = S3Storage(faulty_s3.settings(max_attempts=1))
    base = f"s3://{s3_bucket}/p"
    storage.write_bytes(f"{base}/a.txt", b"hello")
    assert storage.read_bytes(f"{base}/a.txt") == b"hello"
    assert storage.info(f"{base}/a.txt").size == 5
    assert [e.name for e in storage.list(base)] == ["a.txt"]
    big = bytes(range(256)) * (12 * 4096)  # 12 MiB: a multipart upload and a long GET
    (tmp_path / "big.bin").write_bytes(big)
    storage.upload(str(tmp_path / "big.bin"), f"{base}/big.bin")
    storage.download(f"{base}/big.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == big
    storage.delete_many([f"{base}/a.txt"])
    assert not storage.exists(f"{base}/a.txt")

    buffer = io.BytesIO()
    pq.write_table(pa.table({"a": list(range(1000))}), buffer)
    storage.write_bytes(f"{base}/t.parquet", buffer.getvalue())
    from aperio_assets.catalog.s3access import enable_s3

    con = duckdb.connect()
    assert enable_s3(con, storage) == "httpfs"  # range GETs through the proxy
    assert con.sql(f"SELECT count(*), sum(a) FROM read_parquet('{base}/t.parquet')").fetchall() == [(1000, 499500)]
    assert faulty_s3.proxy.counts()["requests"] > 8


@pytest.mark.parametrize(
    ("fault", "error", "applied"),
    [
        ("slowdown", StorageUnavailable, False),  # refused up front: certainly not applied
        ("error500", WriteOutcomeUnknown, False),  # a 500 may follow an applied write: the client can't know
        ("reset", WriteOutcomeUnknown, False),
        ("lost_answer", WriteOutcomeUnknown, True),  # applied, and the answer never came
    ],
)
def test_each_fault_as_the_client_sees_it(faulty_s3, s3_bucket: str, fault: str, error: type, applied: bool) -> None:
    storage = S3Storage(faulty_s3.settings(max_attempts=1))
    storage.write_bytes(f"s3://{s3_bucket}/warm", b"0")  # a pooled connection, as in real use
    faulty_s3.proxy.set_faults(**{fault: 1.0}, methods=["PUT"])
    with pytest.raises(error) as caught:
        storage.write_bytes(f"s3://{s3_bucket}/x", b"1")
    if error is StorageUnavailable:
        assert not isinstance(caught.value, WriteOutcomeUnknown)
    faulty_s3.proxy.faults_off()
    assert faulty_s3.proxy.counts()[f"{fault}:PUT"] >= 1
    stored = _direct(faulty_s3).list_objects_v2(Bucket=s3_bucket, Prefix="x").get("KeyCount", 0)
    assert stored == (1 if applied else 0)


def test_a_lost_create_answer_is_reported_as_the_success_it_was(faulty_s3, s3_bucket: str) -> None:
    """Every answer to the PUT is lost (aiohttp re-sends it on its own, then our retry does): the
    object is there, bears this call's id, and the call returns True."""
    storage = S3Storage(faulty_s3.settings(max_attempts=3))
    storage.write_bytes(f"s3://{s3_bucket}/warm", b"0")
    faulty_s3.proxy.set_faults(lost_answer=1.0, methods=["PUT"])
    assert storage.create_if_absent(f"s3://{s3_bucket}/state/f.parquet", b"mine") is True
    assert faulty_s3.proxy.counts()["lost_answer:PUT"] >= 2  # the client did send it again
    faulty_s3.proxy.faults_off()
    assert storage.create_if_absent(f"s3://{s3_bucket}/state/f.parquet", b"other") is False
    assert storage.read_bytes(f"s3://{s3_bucket}/state/f.parquet") == b"mine"


def test_latency_is_added_to_every_request(faulty_s3, s3_bucket: str) -> None:
    storage = S3Storage(faulty_s3.settings())
    faulty_s3.proxy.set_faults(latency=1.0, latency_ms=5)
    for i in range(3):
        storage.write_bytes(f"s3://{s3_bucket}/l{i}", b"1")
    counts = faulty_s3.proxy.counts()
    assert counts["latency"] == counts["requests"] == 3

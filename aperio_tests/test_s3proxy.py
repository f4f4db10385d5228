"""What clients actually do through the fault-injecting proxy (``aperio_assets/bench/faultproxy.py``),
beyond ``test_faultproxy.py``: aiohttp's own silent re-send of an idempotent request after a dropped
connection (the reason a lost PUT answer can come back as a 412 for the writer's own object), the
error a reset surfaces as, multipart uploads, range GETs and chunked request bodies forwarded
faithfully, and the proxy in its own process (as the bench starts it)."""

from __future__ import annotations

import errno
import http.client
import io
import os
import select
import subprocess
import sys
import time

import aiohttp
import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, EndpointConnectionError

from aperio_assets.errors import StorageUnavailable, WriteOutcomeUnknown
from aperio_assets.storage import S3Storage
from aperio_assets.storage.retry import RetryPolicy
from aperio_tests.helpers import TEST_CREDENTIALS


def _client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=Config(retries={"total_max_attempts": 1}),
    )


def _one_try(faulty_s3) -> S3Storage:
    return S3Storage(faulty_s3.settings(), retry=RetryPolicy(attempts=1))


def test_aiohttp_resends_an_idempotent_put_whose_answer_was_lost(faulty_s3, s3_bucket: str) -> None:
    """One aperio try, yet the proxy sees the PUT twice: aiohttp re-sends PUT/DELETE/GET/HEAD once by
    itself after a reset. Both copies were applied; the caller sees only the second one's fate."""
    storage = _one_try(faulty_s3)
    storage.write_bytes(f"s3://{s3_bucket}/warm", b"0")  # a pooled, reused connection
    faulty_s3.proxy.set_faults(lost_answer=1.0, methods=["PUT"])
    with pytest.raises(WriteOutcomeUnknown):
        storage.write_bytes(f"s3://{s3_bucket}/x", b"1")
    faulty_s3.proxy.faults_off()
    assert faulty_s3.proxy.counts()["lost_answer:PUT"] == 2  # ours, and aiohttp's silent re-send
    assert _client(faulty_s3.upstream_url).get_object(Bucket=s3_bucket, Key="x")["Body"].read() == b"1"


def test_aiohttp_does_not_resend_a_post(faulty_s3, s3_bucket: str) -> None:
    """DeleteObjects is a POST: not idempotent for aiohttp, so a lost answer reaches the caller after
    one request, and the deletion was applied."""
    storage = _one_try(faulty_s3)
    storage.write_bytes(f"s3://{s3_bucket}/a", b"0")
    faulty_s3.proxy.set_faults(lost_answer=1.0, methods=["POST"])
    with pytest.raises(WriteOutcomeUnknown):
        storage.delete_many([f"s3://{s3_bucket}/a"])
    faulty_s3.proxy.faults_off()
    assert faulty_s3.proxy.counts()["lost_answer:POST"] == 1
    assert _client(faulty_s3.upstream_url).list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_reset_read_is_a_connection_reset_wrapped_as_endpoint_connection_error(
    faulty_s3, s3_bucket: str, method: str
) -> None:
    """aiobotocore reports a reset after sending as botocore's EndpointConnectionError ("Could not
    connect to the endpoint URL", which is misleading) wrapping aiohttp's ClientOSError 104; a read
    that fails so is StorageUnavailable, never an unknown outcome."""
    storage = _one_try(faulty_s3)
    storage.write_bytes(f"s3://{s3_bucket}/r", b"0")
    faulty_s3.proxy.set_faults(reset=1.0, methods=[method])
    with pytest.raises(StorageUnavailable) as caught:
        storage.read_bytes(f"s3://{s3_bucket}/r") if method == "GET" else storage.info(f"s3://{s3_bucket}/r")
    faulty_s3.proxy.faults_off()
    assert not isinstance(caught.value, WriteOutcomeUnknown)
    cause = caught.value.__cause__
    assert isinstance(cause, EndpointConnectionError)
    assert isinstance(cause.kwargs["error"], aiohttp.ClientOSError)
    assert cause.kwargs["error"].errno == errno.ECONNRESET
    assert faulty_s3.proxy.counts()[f"reset:{method}"] == 2  # aiohttp re-sent the read once, by itself


def test_multipart_upload_range_get_and_chunked_body_are_forwarded(faulty_s3, s3_bucket: str) -> None:
    client = _client(faulty_s3.endpoint_url)
    data = os.urandom(12 * 2**20)
    client.upload_fileobj(
        io.BytesIO(data),
        s3_bucket,
        "mp.bin",
        Config=TransferConfig(multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20, use_threads=False),
    )
    direct = _client(faulty_s3.upstream_url)
    assert direct.head_object(Bucket=s3_bucket, Key="mp.bin", PartNumber=1)["PartsCount"] == 3
    assert direct.get_object(Bucket=s3_bucket, Key="mp.bin")["Body"].read() == data
    ranged = client.get_object(Bucket=s3_bucket, Key="mp.bin", Range="bytes=6000000-6000099")
    assert ranged["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert ranged["Body"].read() == data[6000000:6000100]

    # a signed PUT whose body comes with Transfer-Encoding: chunked, two requests on one connection
    host, port = faulty_s3.endpoint_url.removeprefix("http://").split(":")
    request = AWSRequest(
        "PUT", f"{faulty_s3.endpoint_url}/{s3_bucket}/chunked.txt", headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"}
    )
    S3SigV4Auth(
        Credentials(TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"], TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]), "s3", "us-east-1"
    ).add_auth(request)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        for _ in range(2):
            conn.request(
                "PUT",
                f"/{s3_bucket}/chunked.txt",
                body=iter([b"hello ", b"chunked ", b"world"]),
                headers={**dict(request.headers), "Transfer-Encoding": "chunked"},
                encode_chunked=True,
            )
            response = conn.getresponse()
            response.read()
            assert response.status == 200
    finally:
        conn.close()
    assert direct.get_object(Bucket=s3_bucket, Key="chunked.txt")["Body"].read() == b"hello chunked world"


def test_the_proxy_in_its_own_process(s3, s3_bucket: str) -> None:
    """``python -m aperio_assets.bench.faultproxy`` prints its URL when ready, forwards, and injects the
    faults it was given (SlowDown on every request here)."""
    # a real process: the proxy's own entry point, its ready line on stdout and its exit on SIGTERM
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aperio_assets.bench.faultproxy",
            "--upstream",
            s3.endpoint_url,
            "--seed",
            "7",
            "--latency-ms",
            "1",
            "--slowdown",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not select.select([proc.stdout], [], [], 0.5)[0]:
            assert proc.poll() is None, "the proxy process exited before printing its URL"
            assert time.monotonic() < deadline, "the proxy process printed no URL within 60 s"
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        client = _client(url)
        with pytest.raises(ClientError) as caught:
            client.list_objects_v2(Bucket=s3_bucket)
        assert caught.value.response["Error"]["Code"] == "SlowDown"
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

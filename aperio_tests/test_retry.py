"""Transient S3 errors are retried with backoff and jitter; permanent ones are not."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from aperio_assets.config import S3Settings
from aperio_assets.errors import StorageError, StorageUnavailable, WriteOutcomeUnknown
from aperio_assets.storage import RetryPolicy, S3Storage, is_transient
from aperio_tests.helpers import S3Server


def client_error(status: int, code: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (client_error(503, "SlowDown"), True),
        (client_error(500, "InternalError"), True),
        (client_error(400, "RequestTimeout"), True),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        (client_error(404, "NoSuchKey"), False),
        (client_error(412, "PreconditionFailed"), False),
        (client_error(403, "AccessDenied"), False),
        (client_error(400, "InvalidArgument"), False),
        (ValueError("a bug"), False),
    ],
)
def test_classification(exc: Exception, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_policy_backs_off_with_jitter_then_succeeds() -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(attempts=5, base_delay=0.1, max_delay=0.3, sleep=sleeps.append, rand=lambda: 1.0)
    calls: list[int] = []

    def flaky(n: int) -> str:
        calls.append(n)
        if n < 3:
            raise client_error(503, "SlowDown")
        return "ok"

    assert policy.run(flaky, what="test") == "ok"
    assert calls == [0, 1, 2, 3]
    assert sleeps == [0.1, 0.2, 0.3]  # doubling, capped at max_delay (rand=1.0 shows the ceiling)


def test_policy_gives_up_and_never_retries_permanent_errors() -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(attempts=3, sleep=sleeps.append)
    calls: list[int] = []

    def forbidden(n: int) -> None:
        calls.append(n)
        raise client_error(403, "AccessDenied")

    with pytest.raises(ClientError):
        policy.run(forbidden, what="test")
    assert calls == [0] and sleeps == []

    def always_down(n: int) -> None:
        calls.append(n)
        raise client_error(503, "SlowDown")

    calls.clear()
    with pytest.raises(ClientError):
        policy.run(always_down, what="test")
    assert calls == [0, 1, 2] and len(sleeps) == 2


def _inject(storage: S3Storage, failures: dict[str, list[Exception]]) -> list[str]:
    """Make the named API calls fail with the given errors first, then reach the real server."""
    seen: list[str] = []

    async def hook(send, operation, params):
        seen.append(operation)
        queue = failures.get(operation)
        if queue:
            raise queue.pop(0)
        return await send(operation, params)

    storage.set_send_hook(hook)
    return seen


def _storage(s3: S3Server, sleeps: list[float]) -> S3Storage:
    return S3Storage(s3.settings(), retry=RetryPolicy(attempts=4, sleep=sleeps.append))


def test_s3_retries_transient_failures_against_the_real_server(s3: S3Server, s3_bucket: str) -> None:
    sleeps: list[float] = []
    storage = _storage(s3, sleeps)
    path = f"s3://{s3_bucket}/x/file.bin"
    seen = _inject(
        storage,
        {
            "put_object": [client_error(503, "SlowDown"), ConnectionResetError(104, "reset")],
            "get_object": [client_error(500, "InternalError")],
        },
    )
    storage.write_bytes(path, b"payload")
    assert storage.read_bytes(path) == b"payload"
    assert seen == ["put_object"] * 3 + ["get_object"] * 2
    assert len(sleeps) == 3
    assert storage.counters.snapshot()["PUT"] == 3  # every attempt is a request


def test_s3_does_not_retry_client_errors(s3: S3Server, s3_bucket: str) -> None:
    sleeps: list[float] = []
    storage = _storage(s3, sleeps)
    seen = _inject(storage, {"put_object": [client_error(400, "InvalidArgument")]})
    with pytest.raises(StorageError, match="InvalidArgument"):
        storage.write_bytes(f"s3://{s3_bucket}/x", b"1")
    assert seen == ["put_object"] and sleeps == []


def test_create_if_absent_with_lost_response_is_still_ours(s3: S3Server, s3_bucket: str) -> None:
    """The PUT lands but its answer is lost; the retry meets 412 and must still report success."""
    storage = _storage(s3, [])
    path = f"s3://{s3_bucket}/state/f.parquet"

    async def hook(send, operation, params):
        result = await send(operation, params)
        if operation == "put_object" and not hook.dropped:
            hook.dropped = True
            raise ConnectionResetError(104, "reset after the object was stored")
        return result

    hook.dropped = False
    storage.set_send_hook(hook)
    assert storage.create_if_absent(path, b"mine") is True
    assert storage.create_if_absent(path, b"someone else") is False
    assert storage.read_bytes(path) == b"mine"


def test_create_if_absent_after_the_clients_own_resend_is_still_ours(s3: S3Server, s3_bucket: str) -> None:
    """aiohttp re-sends a PUT by itself when a reused connection drops its answer: our FIRST try then
    sees 412 for an object that it stored. That is a success, not a collision."""
    storage = _storage(s3, [])
    path = f"s3://{s3_bucket}/state/g.parquet"

    async def hook(send, operation, params):
        result = await send(operation, params)
        if operation == "put_object" and not hook.resent:
            hook.resent = True
            return await send(operation, params)  # the invisible re-send: 412 reaches the caller
        return result

    hook.resent = False
    storage.set_send_hook(hook)
    assert storage.create_if_absent(path, b"mine") is True
    assert storage.create_if_absent(path, b"mine") is False  # same bytes, another call: not ours
    assert storage.read_bytes(path) == b"mine"


def test_mutation_whose_every_try_was_sent_reports_an_unknown_outcome(s3: S3Server, s3_bucket: str) -> None:
    """A PUT whose answers were all lost may have landed: the error says so; one refused up front
    (503 SlowDown every time) certainly did not, and the error is the plain one."""
    storage = _storage(s3, [])
    path = f"s3://{s3_bucket}/x/lost.bin"

    async def lose(send, operation, params):
        if operation == "put_object":
            await send(operation, params)
            raise ConnectionResetError(104, "answer lost")
        return await send(operation, params)

    storage.set_send_hook(lose)
    with pytest.raises(WriteOutcomeUnknown, match="may or may not have been applied"):
        storage.write_bytes(path, b"1")
    assert storage.read_bytes(path) == b"1"  # it had landed, as the error allowed
    # create-if-absent settles it by reading back: the object is there and bears this call's id
    assert storage.create_if_absent(f"s3://{s3_bucket}/x/created.bin", b"2") is True

    refused = _storage(s3, [])
    _inject(refused, {"put_object": [client_error(503, "SlowDown")] * 4})
    with pytest.raises(StorageUnavailable) as caught:
        refused.write_bytes(f"s3://{s3_bucket}/x/refused.bin", b"3")
    assert not isinstance(caught.value, WriteOutcomeUnknown)
    assert not refused.exists(f"s3://{s3_bucket}/x/refused.bin")


def test_unreachable_endpoint_is_a_clear_error() -> None:
    import socket

    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    storage = S3Storage(
        S3Settings(endpoint_url=f"http://127.0.0.1:{port}"), retry=RetryPolicy(attempts=2, sleep=lambda s: None)
    )
    with pytest.raises(StorageUnavailable) as info:
        storage.list("s3://some-bucket/lake")
    message = str(info.value)
    assert f"http://127.0.0.1:{port}" in message and "'some-bucket'" in message


def test_missing_credentials_is_a_clear_error(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    storage = S3Storage(s3_server.settings())
    with pytest.raises(StorageUnavailable, match=rf"no AWS credentials for bucket '{s3_bucket}' at http://"):
        storage.read_bytes(f"s3://{s3_bucket}/anything")

"""S3 storage provider.

s3fs supplies the session, the aiobotocore client and an fsspec filesystem (DuckDB's fallback reads
through it); the requests themselves are made here, one API call each, so that each can be counted,
retried only when transient (s3fs's and botocore's own retries are off), and translated into a clear
error naming the endpoint and bucket.
"""

from __future__ import annotations

import datetime
import functools
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from aperio_assets.config import S3Settings
from aperio_assets.errors import LocationNotFound, StorageError, StorageUnavailable, WriteOutcomeUnknown
from aperio_assets.storage.base import FileInfo, StorageProvider, in_slice
from aperio_assets.storage.retry import RetryPolicy, error_code, http_status, is_transient

ACCESS_DENIED_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "AllAccessDisabled"}
)
# Requests that change the bucket: when every try of one fails without a clear "not applied", the
# change may still have been made, and the error must say so.
MUTATING_OPERATIONS = frozenset({"put_object", "copy_object", "delete_object", "delete_objects"})
# User metadata that identifies one create-if-absent call, so a 412 can be told apart from "ours".
PUT_ID_METADATA = "aperio-put-id"


def surely_not_applied(exc: BaseException) -> bool:
    """Errors after which S3 certainly did not apply the request: it refused it up front (503
    SlowDown/ServiceUnavailable, any 4xx) or the connection was never made. A reset, a timeout or a
    500 after the request was sent may come after S3 applied it."""
    status = http_status(exc)
    if status is not None:
        return status == 503 or 400 <= status < 500
    try:
        from aiohttp import ClientConnectorError
    except ImportError:  # pragma: no cover - aiohttp comes with s3fs
        return False
    from botocore.exceptions import EndpointConnectionError

    if isinstance(exc, EndpointConnectionError):
        # aiobotocore raises this for a failed connect AND for a reset after the request was sent
        # (ClientOSError 104): only the wrapped error tells which.
        exc = exc.kwargs.get("error") or exc
        if isinstance(exc, EndpointConnectionError):
            return False
    return isinstance(exc, ClientConnectorError | ConnectionRefusedError)


def split_s3_url(location: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` → ``("bucket", "a/b")``."""
    rest = location.split("://", 1)[1] if "://" in location else location
    bucket, _, key = rest.partition("/")
    return bucket, key.strip("/")


@functools.cache
def _data_loader(data_path: str | None) -> Any:
    from botocore.loaders import create_loader

    return create_loader(data_path)


def _timestamp(value: str) -> datetime.datetime:
    """An S3 timestamp: ISO 8601 in listings, parsed by the standard library (under 1 µs; botocore's
    default parser took ~100 µs, and a listing of 1,000 keys parses 1,000), else by botocore's
    parser (HTTP dates in headers)."""
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        from botocore.utils import parse_timestamp

        return parse_timestamp(value)
    return parsed


def _aio_session() -> Any:
    """A new botocore session (its own credentials and clients) whose data loader is the process's:
    a session reads botocore's endpoint and S3 service files (several MB of JSON, ~0.3 s of CPU) once
    per loader, and every Lake (a Dagster run's, say) has its own storage and session. Its
    responses' timestamps are parsed by :func:`_timestamp`."""
    from aiobotocore.session import AioSession

    session = AioSession()
    session.register_component("data_loader", _data_loader(session.get_config_variable("data_path")))
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_timestamp)
    return session


def load_botocore_data() -> None:
    """Read botocore's S3 data (its service model, endpoint rules and the like: ~0.2 s of CPU) into
    this process's loader now, by making a client (no request, no thread). In a fork server, every
    worker it forks then has it (``aperio_assets.storage.s3_preload``)."""
    import botocore.session

    session = botocore.session.Session()
    session.register_component("data_loader", _data_loader(session.get_config_variable("data_path")))
    session.create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="-",
        aws_secret_access_key="-",
    )


_FILESYSTEMS: dict[tuple[Any, ...], Any] = {}
_FILESYSTEMS_LOCK = threading.Lock()
_MAX_FILESYSTEMS = 16


def _credentials_environment() -> tuple[tuple[str, str], ...]:
    """What the AWS credential chain reads in the environment (its variables, and HOME for its files):
    a client made under other values is not reused."""
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_") or k == "HOME"))


def _shared_filesystem(settings: S3Settings) -> Any:
    """One s3fs filesystem (one botocore client and its connection pool) per process, settings and
    credentials environment, for every S3Storage. A Lake per Dagster run made its own: a client
    built, and its connections opened, in every run (15-18 ms of client CPU a run, measured alone).
    Refreshable credentials (a role, instance metadata) are refreshed by the client itself."""
    key = (os.getpid(), settings, _credentials_environment())
    with _FILESYSTEMS_LOCK:
        fs = _FILESYSTEMS.get(key)
        if fs is None:
            fs = _new_filesystem(settings)
            if len(_FILESYSTEMS) >= _MAX_FILESYSTEMS:  # (the oldest goes; a storage holding it keeps it)
                _FILESYSTEMS.pop(next(iter(_FILESYSTEMS)))
            _FILESYSTEMS[key] = fs
        return fs


def _new_filesystem(settings: S3Settings) -> Any:
    import s3fs

    config_kwargs: dict[str, Any] = {"retries": {"total_max_attempts": 1}, "connect_timeout": 10, "read_timeout": 60}
    if settings.endpoint_url:
        config_kwargs["s3"] = {"addressing_style": "path"}
    client_kwargs: dict[str, Any] = {"region_name": settings.region}
    if not settings.use_ssl:
        client_kwargs["verify"] = False  # (plain HTTP: no CA bundle to load per client)
    fs = s3fs.S3FileSystem(
        endpoint_url=settings.endpoint_url,
        use_ssl=settings.use_ssl,
        client_kwargs=client_kwargs,
        config_kwargs=config_kwargs,
        use_listings_cache=False,
        skip_instance_cache=True,
        session=_aio_session(),
    )
    fs.retries = 1
    return fs


class S3Storage(StorageProvider):
    scheme = "s3"

    def __init__(self, settings: S3Settings, aperio_root: str | None = None, retry: RetryPolicy | None = None) -> None:
        super().__init__(aperio_root)
        self.settings = settings
        self.retry = retry or RetryPolicy(attempts=settings.max_attempts)
        self._fs: Any = None
        self._fs_lock = threading.Lock()

    @property
    def endpoint_label(self) -> str:
        return self.settings.endpoint_url or f"AWS S3 ({self.settings.region})"

    def describe(self, location: str | None = None) -> str:
        return f"{location} at {self.endpoint_label}" if location else self.endpoint_label

    @property
    def fs(self) -> Any:
        """The s3fs filesystem (listing cache off, its own retries off): the process's for these
        settings and credentials (``_shared_filesystem``)."""
        with self._fs_lock:
            if self._fs is None:
                self._fs = _shared_filesystem(self.settings)
            return self._fs

    # -- one request -----------------------------------------------------------------------------
    async def _send(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        client = await self.fs.set_session()
        result = await getattr(client, operation)(**params)
        if operation == "get_object":
            async with result["Body"] as body:
                result = {**result, "Body": await body.read()}
        return result

    def _request(
        self,
        kind: str,
        operation: str,
        *,
        passthrough: tuple[int, ...] = (),
        errors: list[BaseException] | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """Make one API call with retries; errors with a status in ``passthrough`` are re-raised as
        is. ``errors`` collects the error of every failed try."""
        from fsspec.asyn import sync

        tries: list[BaseException] = [] if errors is None else errors

        def attempt(n: int) -> dict[str, Any]:
            self.counters.add(kind)
            try:
                return sync(self.fs.loop, self._send, operation, params)
            except Exception as exc:
                tries.append(exc)
                raise

        try:
            return self.retry.run(
                attempt, what=f"{operation} s3://{params.get('Bucket')}/{params.get('Key', params.get('Prefix', ''))}"
            )
        except Exception as exc:
            if http_status(exc) in passthrough:
                raise
            error = self._translate(exc, operation, params)
            if operation in MUTATING_OPERATIONS and is_transient(exc) and not all(surely_not_applied(e) for e in tries):
                raise self._outcome_unknown(error, operation, params) from exc
            raise error from exc

    @staticmethod
    def _outcome_unknown(error: StorageError, operation: str, params: dict[str, Any]) -> WriteOutcomeUnknown:
        where = f"s3://{params.get('Bucket')}/{params.get('Key', '')}".rstrip("/")
        return WriteOutcomeUnknown(
            f"{error}; {operation} {where} may or may not have been applied (a try failed after the request was sent)"
        )

    def _translate(self, exc: Exception, operation: str, params: dict[str, Any]) -> StorageError:
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError

        bucket = params.get("Bucket", "?")
        where = f"s3://{bucket}/{params.get('Key', params.get('Prefix', ''))}".rstrip("/")
        endpoint = self.endpoint_label
        code, status = error_code(exc), http_status(exc)
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StorageUnavailable(
                f"no AWS credentials for bucket '{bucket}' at {endpoint}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
            )
        if code in ACCESS_DENIED_CODES or status == 403:
            return StorageUnavailable(
                f"access denied to bucket '{bucket}' at {endpoint} ({code}): "
                "check the AWS credentials and the bucket policy"
            )
        if code == "NoSuchBucket":
            return LocationNotFound(f"bucket '{bucket}' does not exist at {endpoint}")
        if is_transient(exc):
            return StorageUnavailable(
                f"cannot reach {endpoint} for bucket '{bucket}' "
                f"({self.retry.attempts} tries): {code or type(exc).__name__}"
            )
        return StorageError(
            f"{operation} {where} failed at {endpoint}: {code or type(exc).__name__} {status or ''}".rstrip()
        )

    # -- operations ------------------------------------------------------------------------------
    def list(
        self,
        prefix: str,
        *,
        recursive: bool = False,
        after: str | None = None,
        upto: str | None = None,
        expect: int | None = None,
    ) -> list[FileInfo]:
        bucket, key = split_s3_url(prefix)
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": f"{key}/" if key else ""}
        if not recursive:
            params["Delimiter"] = "/"
            after = upto = None
        else:
            if after is not None and after.startswith(f"s3://{bucket}/"):
                params["StartAfter"] = split_s3_url(after)[1]  # (S3 lists in key order, from there)
            if upto is not None and expect is not None:
                # A page is up to 1,000 keys however few the slice holds, each serialized by the
                # server and parsed here (~0.24 s of CPU for 1,000): ask for what the slice should
                # hold, and a few more; the next pages (if it holds more now) are of 1,000.
                params["MaxKeys"] = max(1, min(1000, expect + 16))
        entries: list[FileInfo] = []
        past = False  # a key after ``upto`` was listed: the rest are too
        while not past:
            page = self._request("LIST", "list_objects_v2", **params)
            for obj in page.get("Contents", ()):
                path = f"s3://{bucket}/{obj['Key']}"
                if upto is not None and path > upto:
                    past = True
                    break
                if obj["Key"].endswith("/") or not in_slice(path, after, upto):
                    continue  # (a zero-byte "folder" marker is not a file)
                entries.append(
                    FileInfo(path, obj["Size"], obj["LastModified"].timestamp(), obj.get("ETag", "").strip('"'))
                )
            for common in page.get("CommonPrefixes", ()):
                entries.append(FileInfo(f"s3://{bucket}/{common['Prefix'].rstrip('/')}", 0, 0.0, None, True))
            if not page.get("IsTruncated"):
                break
            params["ContinuationToken"] = page["NextContinuationToken"]
            params.pop("MaxKeys", None)
        entries.sort(key=lambda e: e.path)
        return entries

    def info(self, path: str) -> FileInfo | None:
        bucket, key = split_s3_url(path)
        try:
            head = self._request("HEAD", "head_object", passthrough=(404,), Bucket=bucket, Key=key)
        except Exception as exc:
            if http_status(exc) == 404:
                return None
            raise
        return FileInfo(path, head["ContentLength"], head["LastModified"].timestamp(), head.get("ETag", "").strip('"'))

    def read_bytes(self, path: str) -> bytes:
        bucket, key = split_s3_url(path)
        try:
            return self._request("GET", "get_object", passthrough=(404,), Bucket=bucket, Key=key)["Body"]
        except Exception as exc:
            if http_status(exc) == 404 and error_code(exc) != "NoSuchBucket":
                raise FileNotFoundError(path) from None
            if http_status(exc) == 404:
                raise self._translate(exc, "get_object", {"Bucket": bucket, "Key": key}) from exc
            raise

    def read_range(self, path: str, start: int, length: int) -> bytes:
        bucket, key = split_s3_url(path)
        if length <= 0:
            return b""
        try:
            return self._request(
                "GET",
                "get_object",
                passthrough=(404, 416),
                Bucket=bucket,
                Key=key,
                Range=f"bytes={start}-{start + length - 1}",
            )["Body"]
        except Exception as exc:
            if http_status(exc) == 416:
                return b""  # the range starts past the end
            if http_status(exc) == 404 and error_code(exc) != "NoSuchBucket":
                raise FileNotFoundError(path) from None
            if http_status(exc) == 404:
                raise self._translate(exc, "get_object", {"Bucket": bucket, "Key": key}) from exc
            raise

    def write_bytes(self, path: str, data: bytes) -> None:
        bucket, key = split_s3_url(path)
        self._request("PUT", "put_object", Bucket=bucket, Key=key, Body=data)

    def create_if_absent(self, path: str, data: bytes) -> bool:
        """``If-None-Match: *``, and the truth after any 412 or lost answer.

        A PUT can be applied while its answer is lost; the HTTP client (aiohttp re-sends an
        idempotent method on a reused connection by itself) or our retry then sends it again and
        meets 412 for an object that is in fact ours. Each call therefore tags its object with a
        unique id in its metadata, and a 412 is "ours" exactly when the stored object bears it.
        """
        bucket, key = split_s3_url(path)
        put_id = uuid.uuid4().hex
        try:
            self._request(
                "PUT",
                "put_object",
                passthrough=(412,),
                Bucket=bucket,
                Key=key,
                Body=data,
                IfNoneMatch="*",
                Metadata={PUT_ID_METADATA: put_id},
            )
            return True
        except WriteOutcomeUnknown as unknown:
            # Every try failed after sending: ask the bucket (if it answers) whose object it is.
            try:
                exists, stored = self._put_id(bucket, key)
            except StorageError:
                raise unknown from None
            if not exists:  # not stored now; a delayed try could still land: unknown
                raise
            return stored == put_id
        except Exception as exc:
            if http_status(exc) != 412:
                raise
            try:
                exists, stored = self._put_id(bucket, key)
            except StorageError as verify:
                raise WriteOutcomeUnknown(
                    f"create of {path} met 412 and the object could not be read back "
                    f"({verify}); it may or may not be this writer's"
                ) from exc
            if not exists:  # there at the 412, gone now (deleted after a compaction, say): whose was it?
                raise WriteOutcomeUnknown(
                    f"create of {path} met 412 but the object was gone when read back; "
                    "the write may or may not have been applied"
                ) from exc
            return stored == put_id

    def _put_id(self, bucket: str, key: str) -> tuple[bool, str | None]:
        """Whether the object exists, and the create-if-absent id stored with it (None if untagged)."""
        try:
            head = self._request("HEAD", "head_object", passthrough=(404,), Bucket=bucket, Key=key)
        except Exception as exc:
            if http_status(exc) == 404:
                return False, None
            raise
        return True, head.get("Metadata", {}).get(PUT_ID_METADATA)

    def delete(self, path: str) -> None:
        bucket, key = split_s3_url(path)
        self._request("DELETE", "delete_object", Bucket=bucket, Key=key)

    def delete_many(self, paths: Sequence[str]) -> None:
        """DeleteObjects: up to 1,000 keys per request, in the order given."""
        by_bucket: dict[str, list[str]] = {}
        for path in paths:
            bucket, key = split_s3_url(path)
            by_bucket.setdefault(bucket, []).append(key)
        for bucket, keys in by_bucket.items():
            for start in range(0, len(keys), 1000):
                chunk = keys[start : start + 1000]
                response = self._request(
                    "DELETE",
                    "delete_objects",
                    Bucket=bucket,
                    Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
                )
                errors = [e for e in response.get("Errors", []) if e.get("Code") != "NoSuchKey"]
                if errors:
                    first = errors[0]
                    raise StorageError(
                        f"could not delete s3://{bucket}/{first.get('Key')}: {first.get('Code')} "
                        f"{first.get('Message', '')} (and {len(errors) - 1} more)".rstrip()
                    )

    def move(self, source: str, target: str) -> None:
        src_bucket, src_key = split_s3_url(source)
        bucket, key = split_s3_url(target)
        self._request("PUT", "copy_object", Bucket=bucket, Key=key, CopySource={"Bucket": src_bucket, "Key": src_key})
        self.delete(source)

    def _transfer(self, kind: str, location: str, call: Callable[[], Any], requests: int = 1) -> None:
        """A streaming transfer through s3fs (multipart above its chunk size), with our retries."""
        tries: list[BaseException] = []

        def attempt(n: int) -> None:
            self.counters.add(kind, requests)
            try:
                call()
            except FileNotFoundError:
                raise
            except OSError as exc:  # s3fs wraps botocore's error; classify and report the original
                tries.append(exc.__cause__ or exc)
                if exc.__cause__ is not None:
                    raise exc.__cause__ from None
                raise
            except Exception as exc:
                tries.append(exc)
                raise

        try:
            self.retry.run(attempt, what=location)
        except FileNotFoundError:
            raise
        except Exception as exc:
            bucket, key = split_s3_url(location)
            params = {"Bucket": bucket, "Key": key}
            error = self._translate(exc, "transfer", params)
            if kind == "PUT" and is_transient(exc) and not all(surely_not_applied(e) for e in tries):
                raise self._outcome_unknown(error, "upload", params) from exc
            raise error from exc

    def download(self, path: str, local_path: str) -> None:
        self._transfer("GET", path, lambda: self.fs.get_file(path, local_path))

    def upload(self, local_path: str, path: str) -> None:
        import os

        # One PUT up to s3fs's 50 MiB chunk; above it a multipart upload (create, parts, complete).
        size = os.path.getsize(local_path)
        parts = size // (50 * 2**20) + 1
        self._transfer("PUT", path, lambda: self.fs.put_file(local_path, path), 1 if parts == 1 else parts + 2)

    def check(self, location: str) -> None:
        bucket, _ = split_s3_url(location)
        try:
            self._request("HEAD", "head_bucket", passthrough=(404,), Bucket=bucket)
        except Exception as exc:
            if http_status(exc) == 404:
                raise LocationNotFound(f"bucket '{bucket}' does not exist at {self.endpoint_label}") from None
            raise

    def set_send_hook(self, hook: Callable[..., Any]) -> None:
        """Tests: route every API call through ``hook(original_send, operation, params)``."""
        original = self._send

        async def hooked(operation: str, params: dict[str, Any]) -> dict[str, Any]:
            return await hook(original, operation, params)

        self._send = hooked  # type: ignore[method-assign]

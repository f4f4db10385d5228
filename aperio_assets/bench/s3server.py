"""A loopback S3 server for the benchmark: moto's server in its own process (so it does not share
the bench's interpreter lock), on a free port of 127.0.0.1, with one bucket and dummy credentials.

``python -m aperio_assets.bench.s3server [moto.server's arguments]`` is that server: moto's, made
lighter (``lighten_moto``)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

from aperio_assets.config import S3Settings
from aperio_assets.errors import AperioError

BUCKET = "aperio-bench"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}


@dataclass(frozen=True)
class LoopbackS3:
    endpoint_url: str
    bucket: str

    @property
    def settings(self) -> S3Settings:
        return S3Settings(endpoint_url=self.endpoint_url)


def lighten_moto() -> None:
    """Take from moto's server what costs CPU on every request and is not S3: it lists its package
    directory (``isdir`` on ~200 entries) to route each request (moto 5.2), and werkzeug logs each
    request line. That was ~35% of its CPU per request here (2.2 -> 1.45 ms for a small PUT or GET).
    The emulator is one process under one interpreter lock, so its CPU is a queue every bench worker
    waits in, which real S3 is not."""
    from moto import backends

    listing = getattr(backends, "list_of_moto_modules", None)
    if listing is not None:  # (a moto that routes otherwise has nothing to cache here)
        modules = tuple(listing())  # (the package's directories do not change while it serves)
        backends.list_of_moto_modules = lambda: modules  # type: ignore[assignment]
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _credentials() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in (*CREDENTIALS, "AWS_SESSION_TOKEN", "AWS_PROFILE")}
    os.environ.update(CREDENTIALS)
    for k in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(k, None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def loopback_s3() -> Iterator[LoopbackS3]:
    try:
        import moto.server  # noqa: F401  (only checking it is installed)
    except ImportError:
        raise AperioError("the S3 part of the benchmark needs moto[server]: pip install 'aperio[bench]'") from None
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "aperio_assets.bench.s3server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AperioError(f"the loopback S3 server did not start on {endpoint}") from None
                time.sleep(0.1)
        with _credentials():
            import boto3

            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
            yield LoopbackS3(endpoint, BUCKET)
    finally:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=10)
        if server.poll() is None:
            server.kill()


if __name__ == "__main__":
    lighten_moto()
    from moto.server import main

    main()

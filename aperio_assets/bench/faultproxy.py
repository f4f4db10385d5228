"""A fault-injecting HTTP proxy in front of an S3 endpoint on loopback (tests and the bench).

Every request is forwarded to the upstream server (moto) unchanged, headers included (SigV4 signs
the Host header), except that, per request and with seeded probabilities, the proxy can:

- ``slowdown``: answer 503 ``SlowDown`` without forwarding (S3 throttling);
- ``error500``: answer 500 ``InternalError`` without forwarding;
- ``reset``: reset the client's connection without forwarding;
- ``lost_answer``: forward the request (so S3 applies it), then reset the client's connection instead
  of answering: the fault that makes a client re-send a request that already succeeded;
- ``latency``: wait ``latency_ms`` before forwarding (alone, with probability 1, it emulates the 10-30
  ms a request costs on real S3).

Connections are kept alive as HTTP/1.1 clients expect (aiohttp pools them), which is what makes a
lost answer on a reused connection look like a dropped idle connection to the client. Faults can be
limited to some methods and switched at run time; the proxy counts what it injected. Run it in a
thread (:class:`FaultProxy`) or as a process: ``python -m aperio_assets.bench.faultproxy --upstream
URL [--latency-ms 20] ...`` prints its URL when ready.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import random
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

FAULT_KINDS = ("slowdown", "error500", "reset", "lost_answer")
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
)
_ERRORS = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "error500": (500, "InternalError", "We encountered an internal error. Please try again."),
}


@dataclass
class Faults:
    """Probabilities per request (they add up: at most one fault per request), the latency, and the
    methods faults apply to (None: all)."""

    slowdown: float = 0.0
    error500: float = 0.0
    reset: float = 0.0
    lost_answer: float = 0.0
    latency: float = 0.0  # probability of a delay
    latency_ms: tuple[float, float] = (0.0, 0.0)
    methods: frozenset[str] | None = None
    lost_answer_methods: frozenset[str] | None = field(default=frozenset({"PUT", "POST", "DELETE"}))


class FaultProxy:
    """A threaded proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port``)."""

    def __init__(self, upstream: str, *, seed: int = 0, port: int = 0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, got {upstream!r}")
        self.upstream = (parts.hostname, parts.port or 80)
        self.upstream_url = upstream.rstrip("/")
        self._faults = Faults()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- control ---------------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="aperio-fault-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_faults(
        self,
        *,
        methods: Iterable[str] | None = None,
        lost_answer_methods: Iterable[str] | None = ("PUT", "POST", "DELETE"),
        latency_ms: float | tuple[float, float] = 0.0,
        **probabilities: float,
    ) -> None:
        """Set fault probabilities (``slowdown``, ``error500``, ``reset``, ``lost_answer``, ``latency``)."""
        unknown = set(probabilities) - {*FAULT_KINDS, "latency"}
        if unknown:
            raise ValueError(f"unknown fault kind(s): {sorted(unknown)}")
        if sum(probabilities.get(k, 0.0) for k in FAULT_KINDS) > 1:
            raise ValueError("fault probabilities add up to more than 1")
        span = latency_ms if isinstance(latency_ms, tuple) else (latency_ms, latency_ms)
        with self._lock:
            self._faults = Faults(
                **probabilities,
                latency_ms=(float(span[0]), float(span[1])),
                methods=frozenset(m.upper() for m in methods) if methods else None,
                lost_answer_methods=frozenset(m.upper() for m in lost_answer_methods) if lost_answer_methods else None,
            )

    def faults_off(self) -> None:
        with self._lock:
            self._faults = Faults()

    def counts(self) -> dict[str, int]:
        """Faults injected: per kind (``lost_answer``) and per kind and method (``lost_answer:PUT``);
        ``requests`` counts every request seen."""
        with self._lock:
            return dict(self._counts)

    # -- per request -----------------------------------------------------------------------------
    def _draw(self, method: str) -> tuple[str | None, float]:
        """The fault for one request (or None) and the delay before forwarding it, in seconds."""
        with self._lock:
            faults = self._faults
            self._counts["requests"] += 1
            delay = 0.0
            if faults.methods is not None and method not in faults.methods:
                return None, 0.0
            if faults.latency and self._rng.random() < faults.latency:
                delay = self._rng.uniform(*faults.latency_ms) / 1000
                self._counts["latency"] += 1
            roll, kind = self._rng.random(), None
            for name in FAULT_KINDS:
                probability = getattr(faults, name)
                if (
                    name == "lost_answer"
                    and faults.lost_answer_methods is not None
                    and method not in faults.lost_answer_methods
                ):
                    probability = 0.0
                if roll < probability:
                    kind = name
                    break
                roll -= probability
            if kind is not None:
                self._counts[kind] += 1
                self._counts[f"{kind}:{method}"] += 1
            return kind, delay


def _abort(sock: socket.socket) -> None:
    """Close with RST (not FIN): the client sees its connection reset."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    local = threading.local()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # An answer's headers and body are two writes: with Nagle's algorithm the body would wait
        # for the client's delayed ACK, ~40 ms on every answer beyond the latency asked for.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _upstream(self, fresh: bool = False) -> http.client.HTTPConnection:
            conn = getattr(local, "conn", None)
            if conn is None or fresh:
                if conn is not None:
                    conn.close()
                conn = local.conn = http.client.HTTPConnection(*proxy.upstream, timeout=120)
            return conn

        def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
            for attempt in range(2):  # a pooled upstream connection may have been closed by moto
                conn = self._upstream(fresh=attempt > 0)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for name, value in self.headers.items():
                        if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                            conn.putheader(name, value)
                    if body or self.command in ("PUT", "POST"):
                        conn.putheader("Content-Length", str(len(body)))
                    conn.endheaders(body or None)
                    response = conn.getresponse()
                    data = response.read()
                    return response.status, response.reason, response.getheaders(), data
                except (http.client.HTTPException, ConnectionError, OSError):
                    if attempt:
                        raise
            raise AssertionError("unreachable")  # pragma: no cover

        def _send(self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes) -> None:
            self.send_response_only(status, reason)
            length_sent = False
            for name, value in headers:
                lower = name.lower()
                if lower in HOP_BY_HOP:
                    continue
                if lower == "content-length":
                    if self.command == "HEAD":
                        self.send_header(name, value)  # HEAD: the object's length, no body
                        length_sent = True
                    continue
                self.send_header(name, value)
            if self.command != "HEAD" or not length_sent:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD" and data:
                self.wfile.write(data)
            self.wfile.flush()

        def _handle(self) -> None:
            body = self._body()
            kind, delay = proxy._draw(self.command)
            if delay:
                time.sleep(delay)
            if kind == "reset":
                self.close_connection = True
                _abort(self.connection)
                return
            if kind in _ERRORS:
                status, code, message = _ERRORS[kind]
                xml = (
                    f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                    f"<Message>{message}</Message><RequestId>aperio-fault-proxy</RequestId></Error>"
                ).encode()
                self._send(status, code, [("Content-Type", "application/xml")], xml)
                return
            try:
                status, reason, headers, data = self._forward(body)
            except (http.client.HTTPException, OSError):
                self.close_connection = True
                _abort(self.connection)  # the upstream is gone: the client sees a reset
                return
            if kind == "lost_answer":  # applied upstream; the answer never arrives
                self.close_connection = True
                _abort(self.connection)
                return
            self._send(status, reason, headers, data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        def finish(self) -> None:
            with contextlib.suppress(OSError):  # the connection was reset on purpose
                super().finish()

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aperio_assets.bench.faultproxy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--upstream", required=True, help="the S3 endpoint, http://127.0.0.1:PORT")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay every request by this much")
    for kind in FAULT_KINDS:
        parser.add_argument(
            f"--{kind.replace('_', '-')}",
            type=float,
            default=0.0,
            metavar="P",
            help=f"probability of {kind} per request",
        )
    args = parser.parse_args(argv)
    proxy = FaultProxy(args.upstream, seed=args.seed, port=args.port)
    probabilities = {kind: getattr(args, kind) for kind in FAULT_KINDS}
    proxy.set_faults(**probabilities, latency=1.0 if args.latency_ms else 0.0, latency_ms=args.latency_ms)
    proxy.start()
    print(proxy.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

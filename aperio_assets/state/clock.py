"""The hybrid logical clock and writer identity of DESIGN §5."""

from __future__ import annotations

import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable


def wall_clock_us() -> int:
    return time.time_ns() // 1000


class HybridClock:
    """``tick() = max(now_µs, largest _ts read or written + 1)``.

    Every row a process has read goes through :meth:`observe`, so an update made after reading
    another one is stamped after it whatever the machines' clock skew.
    """

    def __init__(self, now_us: Callable[[], int] = wall_clock_us) -> None:
        self._now_us = now_us
        self._last = 0
        self._lock = threading.Lock()

    def observe(self, ts: int) -> None:
        with self._lock:
            if ts > self._last:
                self._last = ts

    def tick(self) -> int:
        with self._lock:
            self._last = max(self._now_us(), self._last + 1)
            return self._last

    def now(self) -> int:
        """The wall clock in µs (for retention ages), never the logical part."""
        return self._now_us()


PROCESS_CLOCK = HybridClock()


def _new_writer_id() -> str:
    host = re.sub(r"[^A-Za-z0-9]+", "-", socket.gethostname()).strip("-")[:24] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


_writer = _new_writer_id()


def _reset_after_fork() -> None:
    global _writer
    _writer = _new_writer_id()


os.register_at_fork(after_in_child=_reset_after_fork)


def writer_id() -> str:
    """Unique per process (a forked child gets its own); safe in file names."""
    return _writer

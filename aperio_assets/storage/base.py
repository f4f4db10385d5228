"""The storage provider interface: every read and write of the lake and of ``.aperio/`` (DESIGN §3)."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

REQUEST_KINDS = ("PUT", "GET", "LIST", "DELETE", "HEAD")


@dataclass(frozen=True)
class FileInfo:
    """One listed entry. ``mtime`` is in seconds since the epoch; ``etag`` is None on local disk."""

    path: str
    size: int
    mtime: float
    etag: str | None = None
    is_dir: bool = False

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]


class RequestCounter:
    """Thread-safe count of storage requests by kind (PUT/GET/LIST/DELETE/HEAD)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self._counts[kind] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {kind: self._counts.get(kind, 0) for kind in REQUEST_KINDS}

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


def in_slice(path: str, after: str | None, upto: str | None) -> bool:
    """Whether ``path`` is in the slice ``(after, upto]`` of a sorted listing (None: unbounded)."""
    return (after is None or path > after) and (upto is None or path <= upto)


class StorageProvider(ABC):
    """Operations on full locations (local paths or ``s3://bucket/key`` URLs) of one kind of storage.

    ``aperio_root`` is the ``.aperio`` directory when this provider serves it; ``aperio_path`` builds
    locations below it.
    """

    scheme: str

    def __init__(self, aperio_root: str | None = None) -> None:
        self.aperio_root = aperio_root.rstrip("/") if aperio_root else None
        self.counters = RequestCounter()

    # -- locations -----------------------------------------------------------------------------
    def join(self, base: str, *parts: str) -> str:
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])

    def aperio_path(self, schema: str | None, name: str = "") -> str:
        """``<aperioDirectory>/<schema>/<name>`` (``schema=None``: directly under the root)."""
        if self.aperio_root is None:
            raise ValueError(f"this {self.scheme} provider does not serve the .aperio directory")
        parts = [p for p in (schema, name) if p]
        for part in parts:
            if ".." in part.split("/"):
                raise ValueError(f"path component {part!r} may not contain '..'")
        return self.join(self.aperio_root, *parts)

    @abstractmethod
    def describe(self, location: str | None = None) -> str:
        """Where a location lives, for messages (never includes credentials)."""

    # -- operations ------------------------------------------------------------------------------
    @abstractmethod
    def list(
        self,
        prefix: str,
        *,
        recursive: bool = False,
        after: str | None = None,
        upto: str | None = None,
        expect: int | None = None,
    ) -> list[FileInfo]:
        """Entries below ``prefix``, fresh from the storage (no listing cache), sorted by path.

        Non-recursive listings include sub-directories (``is_dir``); recursive ones only files.
        A prefix that does not exist lists as empty. ``after`` and ``upto`` (recursive listings):
        only the files whose path sorts after ``after`` and not after ``upto``, a slice of the whole
        listing that is listed without the rest (S3 starts there and stops there); ``expect``, about
        how many files there are in it (on S3 the first page asks for that many, not 1,000).
        """

    @abstractmethod
    def info(self, path: str) -> FileInfo | None:
        """Size, mtime and etag of one file, or None when it does not exist."""

    def exists(self, path: str) -> bool:
        return self.info(path) is not None

    @abstractmethod
    def read_bytes(self, path: str) -> bytes:
        """The whole file; raises FileNotFoundError when it does not exist."""

    def read_range(self, path: str, start: int, length: int) -> bytes:
        """``length`` bytes from offset ``start`` (fewer at the end of the file): one ranged GET on
        S3, so a Parquet footer is read without the file. Raises FileNotFoundError."""
        return self.read_bytes(path)[start : start + length]

    @abstractmethod
    def write_bytes(self, path: str, data: bytes) -> None:
        """Create or replace ``path`` atomically: readers see the old or the new bytes, never a part."""

    @abstractmethod
    def create_if_absent(self, path: str, data: bytes) -> bool:
        """Create ``path`` only if no file has that name; True if this call created it.

        Atomic against any number of concurrent callers: exactly one of them gets True, and the
        file then holds exactly that caller's bytes.
        """

    @abstractmethod
    def delete(self, path: str) -> None:
        """Remove ``path``; removing a file that is already gone is not an error."""

    def delete_many(self, paths: Sequence[str]) -> None:
        """Remove several files (in as few requests as the storage allows); gone ones are fine."""
        for path in paths:
            self.delete(path)

    @abstractmethod
    def move(self, source: str, target: str) -> None:
        """Move one file (used to archive and quarantine); ``target`` is replaced if it exists."""

    @abstractmethod
    def download(self, path: str, local_path: str) -> None:
        """Copy ``path`` into the local file ``local_path``, streaming (large raw files)."""

    @abstractmethod
    def upload(self, local_path: str, path: str) -> None:
        """Store the local file at ``path``, atomically and streaming (large converted files)."""

    def local_path(self, path: str) -> str | None:
        """The path itself when the storage is the local filesystem (no copy needed), else None."""
        return None

    @abstractmethod
    def check(self, location: str) -> None:
        """Raise StorageUnavailable with a clear reason if ``location`` cannot be reached."""

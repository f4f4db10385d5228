"""One abstraction for every read and write of the lake and of ``.aperio/`` (DESIGN §3)."""

from __future__ import annotations

from aperio_assets.config import S3Settings, is_s3_url
from aperio_assets.storage.base import REQUEST_KINDS, FileInfo, RequestCounter, StorageProvider
from aperio_assets.storage.local import LocalStorage
from aperio_assets.storage.retry import RetryPolicy, is_transient
from aperio_assets.storage.s3 import S3Storage, split_s3_url

__all__ = [
    "REQUEST_KINDS",
    "FileInfo",
    "LocalStorage",
    "RequestCounter",
    "RetryPolicy",
    "S3Storage",
    "StorageProvider",
    "is_transient",
    "open_storage",
    "split_s3_url",
]


def open_storage(location: str, s3: S3Settings | None = None, *, aperio_root: str | None = None) -> StorageProvider:
    """The provider for ``location``'s kind of storage (local path or ``s3://`` URL)."""
    if is_s3_url(location):
        return S3Storage(s3 or S3Settings(), aperio_root=aperio_root)
    return LocalStorage(aperio_root=aperio_root)

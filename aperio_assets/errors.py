"""Errors that reach the user as one clear line (the CLI prints them without a traceback)."""

from __future__ import annotations


class AperioError(Exception):
    """Base class: ``str(error)`` is a complete, one-line message for a person."""

    exit_code = 1


class ConfigError(AperioError):
    """The configuration file is missing, unreadable or holds an invalid value."""

    exit_code = 2

    def __init__(self, source: str, key: str | None, message: str) -> None:
        self.source = source
        self.key = key
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")


class UsageError(AperioError):
    """A command was called with arguments that do not make sense."""

    exit_code = 2


class StorageError(AperioError):
    """A storage operation failed for a reason that retrying will not fix."""


class StorageUnavailable(StorageError):
    """The storage cannot be reached or refuses us (endpoint down, bad credentials, no bucket)."""


class LocationNotFound(StorageUnavailable):
    """A directory or bucket that must exist does not."""


class WriteOutcomeUnknown(StorageUnavailable):
    """A write whose every try failed in a way that does not tell whether the storage applied it
    (the answer was lost, the connection reset after sending): the data may or may not be stored.
    Raised only where a read-back could not settle it; the message says so."""

"""Names of converted files (DESIGN §4, §6): injective, stable, and safe in a DuckDB file pattern.

A raw file's target is a function of its path below its table alone, so adding or removing another
file never moves it, and two raw files never share one:

    tables/<table>/<k>=<v>/.../<rest>.parquet

- ``<table>`` is the table's folder: the table's name with ``/``, ``%``, ``=``, the glob characters
  ``* ? [ ] { }``, ``\\``, control characters and a leading ``.`` or ``_`` percent-encoded (``star*`` →
  ``star%2A``, ``..`` → ``%2E.``). So no table folder is a pattern, a hidden folder, a Hive ``k=v``
  folder, or a way out of ``tables/``; the table's *name* (its view) keeps every character.
- ``<k>=<v>`` are the raw path's Hive folders, every ``k=v`` folder in order, as they are: the Hive
  layout is kept, so a view's one ``*`` per partition level finds every file and DuckDB reads the
  same partition values from them as from the raw folders. Only what DuckDB cannot read in a
  partition folder is percent-encoded: ``?`` and ``\\`` (in keys and values) and ``=`` (in values);
  DuckDB decodes values, so ``k=a=b`` still reads as ``a=b``.
- ``<rest>`` is the raw path from its first non-``k=v`` segment on, file name and extension included,
  encoded like the table folder (except ``=``, which DuckDB never reads from a file name):
  ``flights/year=2013/month=01/flights.csv`` → ``tables/flights/year=2013/month=01/flights.csv.parquet``;
  ``logs/2024-01/app.csv`` → ``tables/logs/2024-01%2Fapp.csv.parquet``; ``t3//x.csv`` →
  ``tables/t3/%2Fx.csv.parquet`` beside ``t3/x.csv``'s ``tables/t3/x.csv.parquet``.

Two raw folders that are one Hive partition spelled two ways (``k=a?b`` and ``k=a%3Fb``) share a
partition folder; should two files in them also share ``<rest>``, the refresh fails the second with
the reason rather than overwrite the first.

The fixed part of every pattern aperio hands DuckDB (a table's location, a raw Parquet file read in
place) has its glob characters escaped as one-character classes (``[*]``, ``[?]``, ``[[]``), which
DuckDB 1.5.5 matches literally on local disk, through httpfs and through fsspec alike. Two things it
cannot name at all: a ``?`` in an S3 URL (httpfs reads it as the start of query parameters) and a
backslash in a local path (DuckDB takes it for a path separator).
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_S3_KEY_BYTES = 1024  # S3's limit on an object key, in UTF-8 bytes
MAX_LOCAL_NAME_BYTES = 255  # a file or folder name on common local filesystems
MAX_LOCAL_PATH_BYTES = 4095  # a whole path (PATH_MAX less the terminating NUL)
GLOB_CHARACTERS = frozenset("*?[]{}\\")
_NAME_UNSAFE = frozenset("/%") | GLOB_CHARACTERS
_FOLDER_UNSAFE = _NAME_UNSAFE | {"="}
_KEY_UNSAFE = frozenset("?\\")
_VALUE_UNSAFE = frozenset("?\\=")
_PATTERN_ESCAPED = frozenset("*?[\\")


def _encode(text: str, unsafe: frozenset[str], *, leading: str = "") -> str:
    out = []
    for index, ch in enumerate(text):
        if ch in unsafe or ord(ch) < 0x20 or ord(ch) == 0x7F or (index == 0 and ch in leading):
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogateescape")))
        else:
            out.append(ch)
    return "".join(out)


def storage_name(text: str) -> str:
    """A table's name as its folder: one path segment that is never a pattern, never hidden, never
    ``..`` and never a Hive ``k=v`` folder. Injective."""
    return _encode(text, _FOLDER_UNSAFE, leading="._") or "%00"  # '' (never a table name) is still a name


def file_name(rest: str) -> str:
    """The converted file's name for ``rest``, the raw path below the table from its first non-Hive
    segment on (``/`` included): one segment, never a pattern, never hidden. Injective."""
    return _encode(rest, _NAME_UNSAFE, leading="._") + ".parquet"


def partition_folder(key: str, value: str) -> str:
    """A raw ``key=value`` folder as the converted file's folder: as it is, but for what DuckDB cannot
    read in a partition folder (it decodes ``%XX`` in values, so a value reads as it did raw)."""
    return f"{_encode(key, _KEY_UNSAFE)}={_encode(value, _VALUE_UNSAFE)}"


def partition_pattern(key: str) -> str:
    """A pattern matching every converted partition folder of ``key`` (``year`` → ``year=*``)."""
    return f"{escape_glob(_encode(key, _KEY_UNSAFE))}=*"


def folder_key(key: str) -> str:
    """The column name DuckDB reads from a converted partition folder of ``key``."""
    return _encode(key, _KEY_UNSAFE)


def hive_keys(folder: str) -> list[str]:
    """The partition keys DuckDB's Hive reader takes from the folders of ``folder`` (every ``k=v``
    segment, wherever it is: a lake kept under ``/data/env=prod/`` gives every file an ``env``)."""
    return [part.split("=", 1)[0] for part in folder.split("/") if "=" in part and not part.startswith("=")]


def target_parts(table: str, relative: str, partition: Sequence[tuple[str, str]]) -> list[str]:
    """The path segments below ``tables/`` for a raw file at ``relative`` below its table's folder
    (``partition``: every ``k=v`` folder of ``relative``, in order)."""
    segments = relative.split("/")
    lead = 0
    while lead < len(segments) - 1 and "=" in segments[lead] and not segments[lead].startswith("="):
        lead += 1  # the leading k=v folders are in the folders already; the rest makes the name
    rest = "/".join(segments[lead:])
    return [storage_name(table), *(partition_folder(k, v) for k, v in partition), file_name(rest)]


def unstorable_reason(location: str, *, s3: bool) -> str | None:
    """Why a converted file cannot be stored at ``location`` (None if it can)."""
    if s3:
        key = location.split("://", 1)[-1].partition("/")[2]
        size = len(key.encode("utf-8", "surrogateescape"))
        if size > MAX_S3_KEY_BYTES:
            return f"its converted key would be {size} bytes, over S3's {MAX_S3_KEY_BYTES}-byte limit"
        return None
    for part in location.split("/"):
        size = len(part.encode("utf-8", "surrogateescape"))
        if size > MAX_LOCAL_NAME_BYTES:
            return f"its converted file name would be {size} bytes, over the {MAX_LOCAL_NAME_BYTES}-byte limit"
    size = len(location.encode("utf-8", "surrogateescape"))
    if size > MAX_LOCAL_PATH_BYTES:
        return f"its converted path would be {size} bytes, over the {MAX_LOCAL_PATH_BYTES}-byte limit"
    return None


def escape_glob(path: str) -> str:
    """``path`` as the fixed part of a DuckDB file pattern: each glob character in a one-character
    class, so that it matches only itself (``p*.parquet`` → ``p[*].parquet``)."""
    return "".join(f"[{ch}]" if ch in _PATTERN_ESCAPED else ch for ch in path)


def unreadable_path_reason(path: str, *, s3: bool) -> str | None:
    """Why DuckDB cannot read the file or folder at ``path`` by name (None if it can)."""
    if s3 and "?" in path:
        return "DuckDB's S3 reader takes a '?' in a key for the start of query parameters"
    if not s3 and "\\" in path:
        return "DuckDB takes a backslash in a local path for a path separator"
    return None


def literal_pattern(path: str, *, s3: bool) -> str | None:
    """``path`` as a DuckDB file pattern that matches exactly that file, or None if DuckDB cannot
    name it (see :func:`unreadable_path_reason`)."""
    return None if unreadable_path_reason(path, s3=s3) else escape_glob(path)

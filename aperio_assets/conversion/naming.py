"""Names of converted files (SPEC §4, §6): injective, stable, and safe in a DuckDB file pattern.

A raw file's target is a function of its path below its table alone, so adding or removing another
file never moves it, and two raw files never share one:

    tables/<table>/<k>=<v>/.../<rest>.parquet

- ``<table>`` is the table's name, ``<k>=<v>`` the Hive folders of the raw path (every ``k=v`` folder,
  in order: the Hive layout is kept, so a view's ``*`` per partition level finds every file), and
  ``<rest>`` the raw path from its first non-``k=v`` segment on, file name and extension included:
  ``flights/year=2013/month=01/flights.csv`` → ``tables/flights/year=2013/month=01/flights.csv.parquet``;
  ``logs/2024-01/app.csv`` → ``tables/logs/2024-01%2Fapp.csv.parquet``.
- Every part is percent-encoded where it holds ``/``, ``%``, a glob character (``* ? [ ] { }``), a
  backslash, a control character, or a leading ``.`` or ``_`` (which readers take for hidden), so
  that no on-disk name is ever read as a pattern, no ``..`` can leave ``tables/``, and distinct raw
  paths (``t3/x.csv`` and ``t3//x.csv``) stay distinct. The table's *name* (its view) keeps every
  character; only its folder is encoded.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_S3_KEY_BYTES = 1024  # S3's limit on an object key, in UTF-8 bytes
MAX_LOCAL_NAME_BYTES = 255  # a file or folder name on common local filesystems
_UNSAFE = frozenset('/%*?[]{}\\')
GLOB_CHARACTERS = frozenset("*?[]{}\\")


def storage_name(text: str) -> str:
    """``text`` as one path segment that is never a pattern, never hidden and never ``..``."""
    out = []
    for index, ch in enumerate(text):
        if ch in _UNSAFE or ord(ch) < 0x20 or ord(ch) == 0x7F or (index == 0 and ch in "._"):
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    return "".join(out) or "%00"  # an empty name (an S3 key may hold empty segments) is still a name


def target_parts(table: str, relative: str, partition: Sequence[tuple[str, str]]) -> list[str]:
    """The path segments below ``tables/`` for a raw file at ``relative`` below its table's folder."""
    segments = relative.split("/")
    lead = 0
    while lead < len(segments) - 1 and "=" in segments[lead] and not segments[lead].startswith("="):
        lead += 1  # the leading k=v folders are in the folders already; the rest makes the name
    rest = "/".join(segments[lead:])
    folders = [f"{storage_name(key)}={storage_name(value)}" for key, value in partition]
    return [storage_name(table), *folders, f"{storage_name(rest)}.parquet"]


def unstorable_reason(location: str, *, s3: bool) -> str | None:
    """Why a converted file cannot be stored at ``location`` (None if it can)."""
    if s3:
        key = location.split("://", 1)[-1].partition("/")[2]
        size = len(key.encode("utf-8"))
        if size > MAX_S3_KEY_BYTES:
            return f"its converted key would be {size} bytes, over S3's {MAX_S3_KEY_BYTES}-byte limit"
        return None
    for part in location.split("/"):
        size = len(part.encode("utf-8"))
        if size > MAX_LOCAL_NAME_BYTES:
            return f"its converted file name would be {size} bytes, over the {MAX_LOCAL_NAME_BYTES}-byte limit"
    return None


def literal_pattern(path: str, *, s3: bool) -> str | None:
    """``path`` as a DuckDB file pattern that matches exactly that file, or None if DuckDB cannot
    name it (a ``?`` in an S3 URL is read as a query string; a backslash cannot be matched locally)."""
    if s3 and "?" in path:
        return None
    if not s3 and "\\" in path:
        return None
    out = []
    for ch in path:
        out.append(f"[{ch}]" if ch in "*?[\\" else ch)
    return "".join(out)


def escape_glob(path: str, *, s3: bool) -> str:
    """A folder used as the fixed part of a pattern (``<folder>/*/*.parquet``): its glob characters
    escaped where DuckDB allows; one it cannot escape is reported by the caller's binding error."""
    return literal_pattern(path, s3=s3) or path

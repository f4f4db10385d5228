"""Which tables a schema folder holds (DESIGN §1), from one recursive listing.

- A raw file at the top of the schema folder is a table named after its stem (``planes.csv`` →
  ``planes``), one batch ``{}``.
- A folder is a table named after the folder; its files belong to the batch given by the ``k=v``
  folders on their path (``flights/year=2013/month=01/a.csv`` → ``{"year": "2013", "month": "01"}``),
  ``{}`` for files with no ``k=v`` folder.
- Hidden files and folders (``.``) and those starting with ``_`` are ignored, as are files in
  formats aperio does not read.
- Name clashes: when two top-level files share a stem, or a file's stem equals a folder's name, each
  such file's table is ``<stem>_<extension>`` (``planes.csv`` + ``planes.json`` → ``planes_csv`` and
  ``planes_json``); the folder keeps its name. Names are compared as DuckDB compares them, ignoring
  ASCII case (``Planes/`` and ``planes.csv`` clash). A table whose name is still taken (folders
  ``A/`` and ``a/``; ``x.csv`` + ``x.json`` beside a folder ``x_csv/``) is not a table: its files are
  ignored with the reason, and the first name in order (folders first) keeps it.
- Names aperio refuses are ignored with a reason (``Discovery.reasons``), never silently: a key with a
  ``.`` or ``..`` segment (S3 allows them; aperio never reads a path that climbs out of its folder),
  a key with an empty folder name right below the schema folder (``schema//x.csv``: a table needs a
  name), and a local name that is not valid UTF-8 (listed with its bytes escaped, ``bad\\xff.csv``).
  Empty segments further down are kept: ``t/x.csv`` and ``t//x.csv`` are two files.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from aperio_assets.conversion.formats import format_of
from aperio_assets.state.keys import canonical_key
from aperio_assets.storage import FileInfo, StorageProvider


@dataclass(frozen=True)
class RawFile:
    info: FileInfo
    relative: str  # path below the table's folder (or the file name for a single-file table)
    format: str
    partition: tuple[tuple[str, str], ...] = ()

    @property
    def path(self) -> str:
        return self.info.path

    @property
    def batch(self) -> str:
        return canonical_key(dict(self.partition))

    @property
    def partition_dir(self) -> str:
        """``k=v/k2=v2`` of this file's batch ('' for ``{}``)."""
        return "/".join(f"{k}={v}" for k, v in self.partition)


@dataclass
class RawTable:
    name: str
    files: list[RawFile] = field(default_factory=list)
    folder: bool = False

    @property
    def partition_columns(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for f in self.files:
            for key, _ in f.partition:
                seen.setdefault(key, None)
        return tuple(seen)

    def batches(self) -> dict[str, list[RawFile]]:
        grouped: dict[str, list[RawFile]] = defaultdict(list)
        for f in self.files:
            grouped[f.batch].append(f)
        return dict(grouped)

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(sorted({f.format for f in self.files}))


@dataclass
class Discovery:
    tables: list[RawTable]
    ignored: list[str]  # files aperio does not read: other formats, and those in ``reasons``
    reasons: dict[str, str] = field(default_factory=dict)  # path → why, for files aperio refuses to read
    # A slice of the listing (a batch run's): it cannot say which files or tables are gone
    partial: bool = False


def catalog_key(name: str) -> str:
    """How DuckDB compares names: ASCII letters ignore case, nothing else does."""
    return "".join(ch.lower() if ch.isascii() else ch for ch in name)


def _hidden(part: str) -> bool:
    return part.startswith((".", "_"))


def _partition(part: str) -> tuple[str, str] | None:
    key, sep, value = part.partition("=")
    return (key, value) if sep and key else None


def _suffix(name: str) -> str:
    return name.rsplit(".", 1)[1].lower() if "." in name else ""


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def _refusal(parts: list[str]) -> str | None:
    """Why a key with these segments (below the schema folder) is not read, if it is refused."""
    if any(p in (".", "..") for p in parts):
        return "its path has a '.' or '..' segment, which aperio never follows"
    if len(parts) > 1 and parts[0] == "":
        return "its path has an empty folder name right below the schema folder ('//'), which cannot name a table"
    return None


def _utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class ListingSlice:
    """The part of a schema's sorted listing whose paths sort after ``after`` and not after ``upto``
    (None: unbounded), ``files`` about how many files it held when it was chosen (a page-size hint)."""

    after: str | None
    upto: str | None
    files: int | None = None

    @classmethod
    def holding(cls, paths: Collection[str], files: int | None = None) -> ListingSlice:
        """The slice from the first of ``paths`` to the last: it starts after the first less its
        last character, which sorts just before it."""
        return cls(min(paths)[:-1], max(paths), files)

    def bounds(self) -> dict[str, Any]:
        """``StorageProvider.list``'s arguments for listing this slice."""
        return {"after": self.after, "upto": self.upto, "expect": self.files}


def discover_tables(storage: StorageProvider, schema_directory: str, part: ListingSlice | None = None) -> Discovery:
    """The schema's tables; with ``part``, from that slice of its listing only (a batch run's: see
    :func:`~aperio_assets.conversion.batches.listing_slice`)."""
    root = schema_directory.rstrip("/")
    top_files: list[RawFile] = []
    folders: dict[str, RawTable] = {}
    ignored: list[str] = []
    reasons: dict[str, str] = {}
    for info in storage.list(root, recursive=True, **(part.bounds() if part is not None else {})):
        if not info.path.startswith(root + "/"):
            continue
        relative = info.path[len(root) + 1 :]  # only the separator: an S3 key may hold empty segments
        parts = relative.split("/")
        refusal = _refusal(parts)
        if refusal is not None:
            ignored.append(info.path)
            reasons[info.path] = refusal
            continue
        if any(_hidden(p) for p in parts):
            continue
        if not _utf8(info.path):  # a local name in another encoding: nothing downstream could store it
            shown = info.path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            ignored.append(shown)
            reasons[shown] = "its name is not valid UTF-8"
            continue
        fmt = format_of(parts[-1])
        if fmt is None:
            ignored.append(info.path)
            continue
        if len(parts) == 1:
            top_files.append(RawFile(info, relative, fmt))
            continue
        partition = tuple(p for p in (_partition(d) for d in parts[1:-1]) if p is not None)
        table = folders.setdefault(parts[0], RawTable(parts[0], folder=True))
        table.files.append(RawFile(info, "/".join(parts[1:]), fmt, partition))

    stems = Counter(catalog_key(_stem(f.relative)) for f in top_files)
    folder_keys = {catalog_key(name) for name in folders}
    candidates = sorted(folders.values(), key=lambda t: t.name)
    for f in sorted(top_files, key=lambda f: f.relative):
        stem = _stem(f.relative)
        clash = stems[catalog_key(stem)] > 1 or catalog_key(stem) in folder_keys
        candidates.append(RawTable(f"{stem}_{_suffix(f.relative)}" if clash else stem, [f]))
    tables: list[RawTable] = []
    owners: dict[str, RawTable] = {}
    for table in candidates:  # folders first: a folder keeps its name
        owner = owners.setdefault(catalog_key(table.name), table)
        if owner is table:
            tables.append(table)
            continue
        what = f"the folder {owner.name!r}" if owner.folder else f"the file {owner.files[0].relative!r}"
        for f in table.files:
            ignored.append(f.path)
            reasons[f.path] = (
                f"its table name {table.name!r} is already the name of the table from {what} "
                "(DuckDB names ignore ASCII case)"
            )
    tables.sort(key=lambda t: t.name)
    for table in tables:
        table.files.sort(key=lambda f: f.relative)
    return Discovery(tables, sorted(ignored), reasons, partial=part is not None)

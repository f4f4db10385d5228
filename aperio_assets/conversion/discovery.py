"""Which tables a schema folder holds (SPEC §1), from one recursive listing.

- A raw file at the top of the schema folder is a table named after its stem (``planes.csv`` →
  ``planes``), one batch ``{}``.
- A folder is a table named after the folder; its files belong to the batch given by the ``k=v``
  folders on their path (``flights/year=2013/month=01/a.csv`` → ``{"year": "2013", "month": "01"}``),
  ``{}`` for files with no ``k=v`` folder.
- Hidden files and folders (``.``) and those starting with ``_`` are ignored, as are files in
  formats aperio does not read.
- Name clashes: when two top-level files share a stem, or a file's stem equals a folder's name, each
  such file's table is ``<stem>_<extension>`` (``planes.csv`` + ``planes.json`` → ``planes_csv`` and
  ``planes_json``); the folder keeps its name.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

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
    ignored: list[str]  # files in formats aperio does not read


def _hidden(part: str) -> bool:
    return part.startswith((".", "_"))


def _partition(part: str) -> tuple[str, str] | None:
    key, sep, value = part.partition("=")
    return (key, value) if sep and key else None


def _suffix(name: str) -> str:
    return name.rsplit(".", 1)[1].lower() if "." in name else ""


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def discover_tables(storage: StorageProvider, schema_directory: str) -> Discovery:
    root = schema_directory.rstrip("/")
    top_files: list[RawFile] = []
    folders: dict[str, RawTable] = {}
    ignored: list[str] = []
    for info in storage.list(root, recursive=True):
        relative = info.path[len(root):].lstrip("/")
        parts = relative.split("/")
        if any(_hidden(p) for p in parts):
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

    stems = Counter(_stem(f.relative) for f in top_files)
    tables = list(folders.values())
    for f in top_files:
        stem = _stem(f.relative)
        clash = stems[stem] > 1 or stem in folders
        tables.append(RawTable(f"{stem}_{_suffix(f.relative)}" if clash else stem, [f]))
    tables.sort(key=lambda t: t.name)
    for table in tables:
        table.files.sort(key=lambda f: f.relative)
    return Discovery(tables, sorted(ignored))

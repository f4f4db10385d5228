"""The machine-local cache of bound views (DESIGN §7).

DuckDB binds a view when it is created, reading its files' metadata; views loaded from a database
file are bound only when queried. So the views are bound into a cache file, one per version of the
definitions (its fingerprint), that every connect opens read-only: no request per view. The cache is
disposable and derived from the shared ``catalog/views`` state, never a source of truth.

Layout under :func:`cache_directory`::

    <fingerprint>/manifest.json                     which build is current, what it holds, what is broken
    <fingerprint>/<build>/aperio_catalog.duckdb      one build (a new folder per build, never rewritten)
    lakes/<lake key>.json                           a lake's last fingerprint: the base of its next build

A new version of the definitions copies the lake's last build and binds only the views whose
definitions changed (and the user views that read them, and those that did not bind before). Every
build gets a folder of its own, so a database file is never replaced under an open connection (nor
under DuckDB's per-path instance cache).

Each build removes what is left behind, once it is older than ``COLLECT_AFTER_SECONDS``: a
fingerprint's superseded builds, and the fingerprints no lake names as its last any more. Never at
once: two processes may build one fingerprint together, and the one that writes its manifest last
must still find its own build there (as must a connect that read a manifest a moment before).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from aperio_assets.catalog.binding import bind_views, drop_view, readers_of
from aperio_assets.catalog.fingerprint import compatibility, view_key
from aperio_assets.catalog.snapshot import SYSTEM_SCHEMA, StateReaders, state_view_statements
from aperio_assets.catalog.views import ViewDefinition
from aperio_assets.sqlutil import quote_identifier

CACHE_ENV = "APERIO_CACHE_DIR"
TABLES_CATALOG = "aperio_catalog"  # the cache file's database: the connection's default
MANIFEST = "manifest.json"
COLLECT_AFTER_SECONDS = 600.0


def cache_directory() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "aperio" / "catalog"


@dataclass(frozen=True)
class CacheEntry:
    """One fingerprint's current build."""

    fingerprint: str
    database: Path  # opened read-only by every connect
    compatibility: str
    schemas: tuple[str, ...]
    views: dict[str, tuple[str, str, str]]  # "schema.view" → (schema, view, digest) of every view built from
    broken: dict[str, str]  # "schema.view" → why it did not bind (not in the database)

    def manifest(self) -> dict[str, object]:
        return {
            "build": self.database.parent.name,
            "compatibility": self.compatibility,
            "schemas": list(self.schemas),
            "views": self.views,
            "broken": self.broken,
        }


@dataclass
class BuildResult:
    entry: CacheEntry
    bound: list[str] = field(default_factory=list)  # the views bound (or tried) by this build
    base: str | None = None  # the fingerprint whose build was copied, None when built from nothing


def _write_json(path: Path, value: object) -> None:
    """Readers see the old or the new file, never a part (written aside, renamed into place)."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    temp.write_text(json.dumps(value, sort_keys=True))
    os.replace(temp, path)


class CacheFiles:
    """The cache files under one directory (:func:`cache_directory` unless given)."""

    def __init__(self, root: Path | None = None, *, collect_after_seconds: float = COLLECT_AFTER_SECONDS) -> None:
        self.root = root if root is not None else cache_directory()
        self.collect_after_seconds = collect_after_seconds

    def entry(self, fingerprint: str) -> CacheEntry | None:
        """The fingerprint's current build, or None when there is none usable."""
        folder = self.root / fingerprint
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            build = str(manifest["build"])
            if not build.isalnum():  # a folder name of ours, nothing that points elsewhere
                return None
            entry = CacheEntry(
                fingerprint,
                folder / build / f"{TABLES_CATALOG}.duckdb",
                str(manifest["compatibility"]),
                tuple(manifest["schemas"]),
                {
                    key: (str(schema), str(name), str(digest))
                    for key, (schema, name, digest) in manifest["views"].items()
                },
                {str(key): str(why) for key, why in manifest["broken"].items()},
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return entry if entry.compatibility == compatibility() else None

    def latest(self, lake_key: str) -> CacheEntry | None:
        """The lake's last build, if it is still there."""
        try:
            fingerprint = json.loads((self.root / "lakes" / f"{lake_key}.json").read_text())["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return self.entry(str(fingerprint)) if isinstance(fingerprint, str) else None

    def build(
        self,
        fingerprint: str,
        lake_key: str,
        schemas: Sequence[str],
        views: Sequence[ViewDefinition],
        digests: Sequence[str],
        *,
        base: CacheEntry | None,
        prepare: Callable[[duckdb.DuckDBPyConnection], None],
        workers: int,
    ) -> BuildResult:
        """A new build for ``fingerprint``: a copy of ``base`` (a build of other definitions of this
        lake, or an older build of the same ones) with only what differs bound again, or, without a
        usable base, every view bound. ``prepare`` readies the scratch connection to bind (S3 access,
        the state snapshot that views over ``aperio.*`` read)."""
        folder = self.root / fingerprint
        build = uuid.uuid4().hex[:16]
        scratch_folder = folder / f".{build}"  # dot folders are builds in progress: never collected
        scratch_folder.mkdir(parents=True)
        path = scratch_folder / f"{TABLES_CATALOG}.duckdb"
        if base is not None:
            try:
                shutil.copyfile(base.database, path)
            except OSError:  # collected meanwhile: bind everything
                base = None
        try:
            con = duckdb.connect(str(path))
            try:
                prepare(con)
                if base is None:
                    for statement in state_view_statements():
                        con.execute(statement)
                bound, broken = self._bind(con, schemas, views, digests, base, workers)
            finally:
                con.close()
            os.rename(scratch_folder, folder / build)
        except BaseException:
            shutil.rmtree(scratch_folder, ignore_errors=True)
            raise
        entry = CacheEntry(
            fingerprint,
            folder / build / f"{TABLES_CATALOG}.duckdb",
            compatibility(),
            tuple(schemas),
            {view_key(v): (v.schema_name, v.view_name, d) for v, d in zip(views, digests, strict=True)},
            broken,
        )
        _write_json(folder / MANIFEST, entry.manifest())
        self._collect(folder, keep=build)
        (self.root / "lakes").mkdir(exist_ok=True)
        _write_json(self.root / "lakes" / f"{lake_key}.json", {"fingerprint": fingerprint})
        return BuildResult(entry, bound, base.fingerprint if base is not None else None)

    @staticmethod
    def _bind(
        con: duckdb.DuckDBPyConnection,
        schemas: Sequence[str],
        views: Sequence[ViewDefinition],
        digests: Sequence[str],
        base: CacheEntry | None,
        workers: int,
    ) -> tuple[list[str], dict[str, str]]:
        """Bring the scratch database (empty, or a copy of ``base``) to ``views``; returns the views
        bound (or tried) and those that did not bind."""
        held = base.views if base is not None else {}
        broken_before = base.broken if base is not None else {}
        for name in base.schemas if base is not None else ():
            if name not in schemas and name != SYSTEM_SCHEMA:
                con.execute(f"DROP SCHEMA IF EXISTS {quote_identifier(name)} CASCADE")
        for name in schemas:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(name)}")
        wanted = {view_key(v): d for v, d in zip(views, digests, strict=True)}
        # What changed: new or different definitions, and those gone (their readers change too).
        changed = {key for key, digest in wanted.items() if key not in held or held[key][2] != digest}
        gone = [(schema, name) for key, (schema, name, _) in held.items() if key not in wanted]
        for schema, name in gone:
            if schema in schemas:  # (the others went with their schema)
                con.execute(f"DROP VIEW IF EXISTS {quote_identifier(schema)}.{quote_identifier(name)}")
        names = [v.view_name for v in views if view_key(v) in changed] + [name for _, name in gone]
        again = changed | readers_of(views, names) | (set(broken_before) & set(wanted))
        todo = [v for v in views if view_key(v) in again]
        for view in todo:
            if view_key(view) in held:
                drop_view(con, view)  # one that no longer binds must not stay as it was
        broken = bind_views(con, todo, workers=workers)
        return sorted(view_key(v) for v in todo), broken

    def _collect(self, folder: Path, keep: str) -> None:
        """Remove the fingerprint's superseded builds and the fingerprints no lake names any more,
        those old enough (an open connection keeps reading its file)."""
        cutoff = time.time() - self.collect_after_seconds
        named = {folder.name}
        for lake in (self.root / "lakes").glob("*.json"):
            try:
                named.add(str(json.loads(lake.read_text())["fingerprint"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        for child in folder.iterdir():
            if child.is_dir() and child.name != keep and not child.name.startswith(".") and _older(child, cutoff):
                shutil.rmtree(child, ignore_errors=True)
        for other in self.root.iterdir():
            if other.name not in named and (other / MANIFEST).exists() and _older(other / MANIFEST, cutoff):
                shutil.rmtree(other, ignore_errors=True)


def _older(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff
    except OSError:
        return False


class OpenCatalogs:
    """The cache files this process keeps open, one per lake: a connect to a file kept open gets a
    new connection on the DuckDB database already there instead of a new database instance (creating
    one, which loads DuckDB's built-in extensions, starts its threads and reads the file's catalog,
    is most of what a connect costs: about 20 ms on local disk).

    What that shares is what DuckDB shares between two connections to one file anyway: global
    settings and attached databases; each connection has its own registered snapshot and temporary
    objects. Only lakes read without S3 settings are kept open: an S3 connection enables global
    metadata caches that must not outlive it. A lake's previous file is let go when it gets a new
    one (connections on it stay valid: a DuckDB database lives while any connection to it does)."""

    MAX_HELD = 4  # lakes whose file is kept open (each an open DuckDB database, with its threads)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # lake key → (file, keeper), least recently connected first
        self._held: dict[str, tuple[str, duckdb.DuckDBPyConnection]] = {}
        self._inherited: list[duckdb.DuckDBPyConnection] = []

    def connect(self, lake_key: str, database: Path) -> duckdb.DuckDBPyConnection:
        path = str(database)
        let_go = []
        with self._lock:
            held = self._held.pop(lake_key, None)
            if held is not None and held[0] != path:
                let_go.append(held[1])
                held = None
            if held is None:
                held = (path, duckdb.connect(path, read_only=True))
            self._held[lake_key] = held
            while len(self._held) > self.MAX_HELD:
                let_go.append(self._held.pop(next(iter(self._held)))[1])
        for keeper in let_go:
            keeper.close()
        return duckdb.connect(path, read_only=True)

    def clear(self) -> None:
        """Let every kept file go."""
        with self._lock:
            held, self._held = self._held, {}
        for _, keeper in held.values():
            keeper.close()

    def forget_after_fork(self) -> None:
        """In a forked child: never use nor close what the parent held (its threads are not here)."""
        self._inherited.extend(keeper for _, keeper in self._held.values())
        self._held = {}
        self._lock = threading.Lock()


class ProcessCache:
    """What this process keeps between connects: its state readers (:class:`StateReaders`) and the
    cache files it holds open (:class:`OpenCatalogs`). :meth:`clear` makes it as a new process's."""

    def __init__(self) -> None:
        self.state = StateReaders()
        self.catalogs = OpenCatalogs()

    def clear(self) -> None:
        self.state.clear()
        self.catalogs.clear()


PROCESS_CACHE = ProcessCache()
os.register_at_fork(after_in_child=PROCESS_CACHE.catalogs.forget_after_fork)

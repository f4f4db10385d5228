"""A schema's batches as units of work that orchestration hands out (Dagster partitions, runs).

Each batch of each table gets a stable, readable key: the table's name, then its Hive folders
(``flights/year=2013/month=01``; a table with one batch, ``{}``, is just ``planes``). A batch's
*fingerprint* digests its files' paths, sizes, modification times and etags, so a changed batch
gets a new one; a batch *needs a run* when one of its files is new or changed (compared with the
conversion lineage), or failed the last time.

:func:`convert_batches` and :func:`mark_batches` are the refresh restricted to some batches, each
step recording its own state rows (so any number of these run at once, one per batch or range of
batches, with no conflict). :func:`finish_schema` is what remains once per schema afterwards:
forget the files and batches that are gone and write the model.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace

from aperio_assets import layout
from aperio_assets.conversion.discovery import ListingSlice, RawFile, RawTable
from aperio_assets.conversion.refresh import LineageSink, SchemaRefresh, unchanged
from aperio_assets.state.access import open_state
from aperio_assets.state.lineage import Row

_KEY_UNSAFE = {chr(c) for c in range(0x20)} | {"\x7f", "%"}


def batch_key(table: RawTable, raw: RawFile) -> str:
    """The key of ``raw``'s batch: ``<table>[/<k>=<v>...]``, with ``%``, control characters and the
    dots of a ``...`` percent-encoded (Dagster refuses those in a partition key); injective."""
    text = table.name + ("/" + raw.partition_dir if raw.partition else "")
    out = "".join(f"%{ord(ch):02X}" if ch in _KEY_UNSAFE else ch for ch in text)
    while "..." in out:
        out = out.replace("...", "%2E..", 1)
    return out


@dataclass
class Batch:
    key: str
    table: RawTable
    batch: str  # the canonical batch key (the partition-status key)
    files: list[RawFile] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for f in sorted(self.files, key=lambda f: f.path):
            line = f"{f.path}\0{f.info.size}\0{f.info.mtime}\0{f.info.etag}\n"
            digest.update(line.encode("utf-8", "surrogateescape"))
        return digest.hexdigest()[:16]

    def needs_run(self, lineage: dict[str, Row], *, retry_failed: bool = True) -> bool:
        """A file is new or changed (or, with ``retry_failed``, failed the last time)."""
        for f in self.files:
            row = lineage.get(f.path)
            if not unchanged(f, row) or (retry_failed and row.get("error")):
                return True
        return False


def schema_batches(run: SchemaRefresh) -> dict[str, Batch]:
    """Every batch of the schema (one listing), by key, in discovery order."""
    batches: dict[str, Batch] = {}
    for table in run.discovery.tables:
        for raw in table.files:
            key = batch_key(table, raw)
            batches.setdefault(key, Batch(key, table, raw.batch)).files.append(raw)
    return batches


def select_batches(run: SchemaRefresh, keys: Collection[str]) -> tuple[dict[str, Batch], list[str]]:
    """The batches of ``keys`` that the listing has, and the keys it no longer has. A slice of the
    listing (``SchemaRefresh.list_only``) that lacks one of them (its files moved since it was
    planned, or it was given for other batches) cannot say it is gone: the whole schema is listed."""
    batches = schema_batches(run)
    if run.discovery.partial and any(key not in batches for key in keys):
        run.list_everything()
        batches = schema_batches(run)
    return {key: batches[key] for key in keys if key in batches}, [key for key in keys if key not in batches]


def listing_slice(batches: Collection[Batch], listed: Sequence[str]) -> ListingSlice | None:
    """The slice of the schema's sorted listing (``listed``: every file's path, sorted) that holds
    every file of ``batches``, for :meth:`SchemaRefresh.list_only`: a run of these batches lists that
    slice, not the whole schema (a LIST per run of what the run converts, not of the lake). It starts
    after the first path less its last character (``ListingSlice.holding``). None when a batch is a
    file at the top of the schema folder: its table's name depends on the other files there
    (``discover_tables``)."""
    paths = [f.path for b in batches for f in b.files]
    if not paths or not all(b.table.folder for b in batches):
        return None
    part = ListingSlice.holding(paths)
    held = bisect.bisect_right(listed, part.upto) - bisect.bisect_left(listed, min(paths))  # (others' files too)
    return replace(part, files=held)


def convert_batches(run: SchemaRefresh, batches: dict[str, Batch], lineage: dict[str, Row], sink: LineageSink) -> None:
    """Convert what needs converting in ``batches`` (as :meth:`SchemaRefresh.convert_files` does for
    the whole schema, but forgetting nothing: that is :func:`finish_schema`'s)."""
    # only these batches' files are looked at: no listing of tables/ when none of them is converted yet
    _, todo = run.plan(lineage, only={f.path for b in batches.values() for f in b.files})
    replaced = run.convert(todo, lineage, sink)
    run.delete_replaced(replaced, lineage)


def mark_batches(
    run: SchemaRefresh, batches: dict[str, Batch], lineage: dict[str, Row], status: list[Row]
) -> tuple[list[Row], dict[str, str]]:
    """The status rows to write for ``batches``, and the batches in error (key → why)."""
    marks, _ = run.process_batches(lineage, status, only={(b.table.name, b.batch) for b in batches.values()})
    failed = {}
    for key, b in batches.items():  # (as the batch's mark says it, whether or not the mark changed)
        rows = [(f, lineage.get(f.path) or {}) for f in b.files]
        errors = [f"{f.relative}: {row['error']}" for f, row in rows if row.get("error")]
        if errors:
            failed[key] = "; ".join(errors)
    return marks, failed


def finish_schema(run: SchemaRefresh) -> tuple[list[str], int]:
    """After the batches: forget raw files that are gone (their outputs and lineage rows) and the
    batches aperio marked that are gone, then write the model. Returns the forgotten source paths
    and the number of batch marks removed."""
    lake, schema = run.lake, run.schema.name
    conversions = open_state(lake, schema, layout.CONVERSIONS)
    lineage = {r["source_path"]: r for r in conversions.rows()}
    removed = run.forget(run.gone(lineage), lineage)  # (no plan: nothing is converted here)
    if removed:
        conversions.apply([], [(p,) for p in removed])
    status = open_state(lake, schema, layout.PARTITION_STATUS)
    vanished = run.vanished_batches(status.rows())
    if vanished:
        status.apply([], vanished)
    run.write_model(lineage)
    return removed, len(vanished)


@dataclass
class BatchChanges:
    """How a schema's batches stand against the keys an orchestrator registered."""

    added: list[str]  # keys of batches not registered yet, in listing order
    removed: list[str]  # registered keys whose batch is gone
    requested: dict[str, str]  # key → fingerprint, for every batch that needs a run
    ordered: list[str]  # the keys once registered: those kept in their order, then the added ones
    listing: str  # a digest of the whole listing: an unchanged lake has the same one
    batches: dict[str, Batch] = field(default_factory=dict)  # every batch listed, by key


def batch_changes(run: SchemaRefresh, registered: Sequence[str], *, retry_failed: bool = True) -> BatchChanges:
    """Compare the schema's listing (one LIST) and lineage (one state read) with ``registered``.
    ``retry_failed``: a batch whose unchanged file failed needs a run (a full refresh tries it
    again; a sensor waits for the file to change, or for someone to retry the failed partition)."""
    batches = schema_batches(run)
    lineage = {r["source_path"]: r for r in open_state(run.lake, run.schema.name, layout.CONVERSIONS).rows()}
    known = set(registered)
    added = [key for key in batches if key not in known]
    removed = [key for key in registered if key not in batches]
    requested = {key: b.fingerprint for key, b in batches.items() if b.needs_run(lineage, retry_failed=retry_failed)}
    ordered = [key for key in registered if key in batches] + added
    digest = hashlib.sha256("\n".join(f"{k}\0{batches[k].fingerprint}" for k in sorted(batches)).encode())
    return BatchChanges(added, removed, requested, ordered, digest.hexdigest()[:16], batches)

"""View definitions: the ``catalog/views`` state table (DESIGN §4, §7).

``generated`` definitions are rebuilt from the schemas' generated models; ``user`` views (added with
``aperio views add``) and ``migrated`` ones (from a legacy catalog) are never touched by a rebuild.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aperio_assets import layout
from aperio_assets.config import is_s3_url
from aperio_assets.conversion.naming import escape_glob, folder_key, hive_keys, literal_pattern, partition_pattern
from aperio_assets.errors import UsageError
from aperio_assets.lake import Lake
from aperio_assets.sqlutil import quote_identifier, quote_literal
from aperio_assets.state.access import schema_table, state_directory
from aperio_assets.state.table import StateTable
from aperio_assets.state.tables import VIEWS

ORIGINS = ("generated", "user", "migrated")


@dataclass(frozen=True)
class ViewDefinition:
    schema_name: str
    view_name: str
    sql: str
    origin: str
    columns: tuple[tuple[str, str], ...] = ()

    def row(self) -> dict[str, Any]:
        return {
            "schema_name": self.schema_name,
            "view_name": self.view_name,
            "sql": self.sql,
            "origin": self.origin,
            "columns": json.dumps([list(c) for c in self.columns]) if self.columns else None,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ViewDefinition:
        columns = tuple(tuple(c) for c in json.loads(row["columns"])) if row.get("columns") else ()
        return cls(row["schema_name"], row["view_name"], row["sql"], row["origin"], columns)  # type: ignore[arg-type]


def views_directory(lake: Lake) -> str:
    return state_directory(lake, None, VIEWS)


def views_table(lake: Lake) -> StateTable:
    """The lake's ``catalog/views`` state table (``state.access``: opened once per Lake)."""
    return schema_table(lake, None, VIEWS)


def table_scan_sql(sources: list[str], exclude: Sequence[str] = (), *, same_columns: bool = False) -> str:
    """One scan of a generated view: Hive partitioning on, without the ``exclude`` columns (partition
    keys DuckDB reads from folders above the table's own). ``sources`` are DuckDB file patterns (see
    :func:`generated_definitions`). Columns are united by name unless the lineage showed every file
    with the ``same_columns``: then binding the view reads one file's footer, not every file's."""
    files = quote_literal(sources[0]) if len(sources) == 1 else "[" + ", ".join(map(quote_literal, sources)) + "]"
    columns = f" EXCLUDE ({', '.join(map(quote_identifier, exclude))})" if exclude else ""
    union = "" if same_columns else ", union_by_name = true"
    return f"SELECT *{columns} FROM read_parquet({files}, hive_partitioning = true{union})"


def _table_sql(lake: Lake, table: dict[str, Any]) -> str | None:
    """The SELECT of one model table's view, or None if it has nothing readable to show.

    Each pattern matches exactly this table's files: raw Parquet read in place is named literally (a
    path DuckDB cannot name was failed by the refresh, so it is left out), and the fixed part of the
    converted files' pattern, their table's folder, has its glob characters escaped (the aperio
    directory may hold some; the table's own folder never does), so `star*` never reads `starx`'s
    files. DuckDB's Hive reader refuses files whose folders name different partition keys, so files
    are read in one scan per set of keys (``t/year=2020/month=01/a.csv`` beside ``t/b.csv``), united
    by name: a file without a partition column reads NULL there."""
    layouts = table.get("layouts")
    if layouts is None:  # a model written before layouts were recorded: one scan, as then
        in_place = [literal_pattern(p, s3=is_s3_url(p)) for p in table.get("parquetInPlace") or []]
        sources = [p for p in in_place if p is not None]
        if table.get("files", 0) > len(in_place):  # some files were converted into tables/
            depth = len(table.get("partitionColumns") or [])
            sources.insert(0, lake.storage.join(escape_glob(table["location"]), *(["*"] * depth), "*.parquet"))
        if not sources or table.get("failedFiles", 0) >= table.get("files", 0):
            return None
        return table_scan_sql(sources)
    scans: dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]] = {}  # (keys read, own keys) → sources
    digests: dict[tuple[tuple[str, ...], tuple[str, ...]], set[str | None]] = {}  # → the files' columns
    for entry in layouts:
        own = tuple(folder_key(k) for k in entry["keys"])
        scan_keys: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
        if entry.get("converted"):
            pattern = lake.storage.join(
                escape_glob(table["location"]), *map(partition_pattern, entry["keys"]), "*.parquet"
            )
            scan_keys.append((tuple(hive_keys(table["location"])) + own, own))
            scans.setdefault(scan_keys[-1], []).append(pattern)
        for path in entry.get("inPlace") or []:
            literal = literal_pattern(path, s3=is_s3_url(path))
            if literal is not None:
                scan_keys.append((tuple(hive_keys(path.rsplit("/", 1)[0])), own))
                scans.setdefault(scan_keys[-1], []).append(literal)
        for key in scan_keys:
            digests.setdefault(key, set()).add(entry.get("columnsDigest"))
    selects = [
        table_scan_sql(
            sources,
            [k for k in dict.fromkeys(read) if k not in own],
            same_columns=len(digests[read, own]) == 1 and None not in digests[read, own],
        )
        for (read, own), sources in sorted(scans.items())
    ]
    return " UNION ALL BY NAME ".join(selects) if selects else None


def generated_definitions(lake: Lake) -> list[ViewDefinition]:
    """One view per table of every schema's generated model."""
    definitions = []
    for schema in lake.schemas():
        model = _read_model(lake, schema.name)
        if model is None:
            continue
        for table in model.get("tables", []):
            definition = _table_definition(lake, schema.name, table)
            if definition is not None:  # (None: nothing readable to show)
                definitions.append(definition)
    return definitions


def _read_model(lake: Lake, schema: str) -> dict[str, Any] | None:
    """``schema``'s generated model, or None if it has none yet."""
    try:
        return json.loads(lake.storage.read_bytes(lake.storage.aperio_path(schema, layout.GENERATED_MODEL)))
    except FileNotFoundError:
        return None


def _drifted(layout_entry: dict[str, Any], found: dict[tuple[str, ...], set[str]]) -> bool:
    """Whether a layout bound from one footer (its ``columnsDigest``) now has files with other
    columns (``found``: partition keys → the digests of its converted files' columns)."""
    digest = layout_entry.get("columnsDigest")
    return digest is not None and found.get(tuple(layout_entry["keys"]), {digest}) != {digest}


def _table_definition(lake: Lake, schema: str, table: dict[str, Any]) -> ViewDefinition | None:
    """The generated view of one model table, or None if it has nothing readable to show."""
    sql = _table_sql(lake, table)
    if sql is None:
        return None
    columns = tuple((c["name"], c["type"]) for c in table.get("columns", []))
    return ViewDefinition(schema, table["name"], sql, "generated", columns)


@dataclass(frozen=True)
class RebuildSummary:
    """What a rebuild of the generated view definitions writes or would write."""

    written: int  # generated definitions new or changed
    removed: int  # generated definitions no model has any more
    unchanged: int
    shadowed_by_user_views: int  # generated names a user's or migrated view keeps
    views: int  # definitions after the rebuild


class ViewStore:
    """List, add, drop and rebuild view definitions."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self.table = views_table(lake)

    def list(self) -> list[ViewDefinition]:
        return sorted(
            (ViewDefinition.from_row(r) for r in self.table.rows()), key=lambda v: (v.schema_name, v.view_name)
        )

    def plan_rebuild(self) -> tuple[list[dict[str, Any]], list[tuple[str, str]], RebuildSummary]:
        """What a rebuild writes (generated definitions that changed), deletes (generated ones no
        model has any more), and a summary. Writes nothing."""
        current = {(v.schema_name, v.view_name): v for v in self.list()}
        wanted = {(v.schema_name, v.view_name): v for v in generated_definitions(self.lake)}
        upserts, kept = [], 0
        for key, view in wanted.items():
            existing = current.get(key)
            if existing is not None and existing.origin != "generated":
                kept += 1  # a user's or migrated view of that name wins over the generated one
            elif existing != view:
                upserts.append(view.row())
        stale = [key for key, v in current.items() if v.origin == "generated" and key not in wanted]
        summary = RebuildSummary(
            written=len(upserts),
            removed=len(stale),
            unchanged=len(wanted) - len(upserts) - kept,
            shadowed_by_user_views=kept,
            views=len(current)
            - len(stale)
            + sum(1 for v in upserts if (v["schema_name"], v["view_name"]) not in current),
        )
        return upserts, stale, summary

    def rebuild(self) -> RebuildSummary:
        """Replace the generated definitions with what the generated models say now (one write)."""
        upserts, stale, summary = self.plan_rebuild()
        self.table.write(upserts=upserts, deletes=stale)
        return summary

    def follow_column_drift(self, schema: str, digests: dict[str, dict[tuple[str, ...], set[str]]]) -> list[str]:
        """Write at once the generated definition of each table of ``schema`` whose files now have
        columns (``digests``: table → partition keys → the digests of its converted files' columns)
        that its model's scan of those keys, bound from one footer, does not: that scan with
        ``union_by_name``. Returns those tables. A user's or migrated view of that name is left
        alone; the next model and rebuild take over."""
        try:
            model = _read_model(self.lake, schema)
        except ValueError:
            model = None  # (unreadable: the next model write replaces it)
        if model is None:
            return []  # no model yet: no view either
        drifted = []
        for table in model.get("tables", []):
            found = digests.get(table["name"], {})
            entries = table.get("layouts") or []
            moved = [_drifted(entry, found) for entry in entries]
            if any(moved):
                layouts = [{**e, "columnsDigest": None} if m else e for e, m in zip(entries, moved, strict=True)]
                drifted.append({**table, "layouts": layouts})
        if not drifted:
            return []
        current = {(v.schema_name, v.view_name): v for v in self.list()}
        upserts = []
        for table in drifted:
            view = _table_definition(self.lake, schema, table)
            existing = current.get((schema, table["name"]))
            if view is None or (existing is not None and (existing.origin != "generated" or existing.sql == view.sql)):
                continue
            upserts.append(view.row())
        if upserts:
            self.table.write(upserts=upserts)
        return sorted(row["view_name"] for row in upserts)

    def add(self, schema: str, name: str, sql: str, origin: str = "user") -> ViewDefinition:
        if origin not in ORIGINS:
            raise UsageError(f"unknown view origin {origin!r}")
        self.lake.schema(schema)  # the schema must exist
        if not name or "\x00" in name:
            raise UsageError("a view needs a name")
        view = ViewDefinition(schema, name, sql.strip().rstrip(";"), origin)
        self.table.write(upserts=[view.row()])
        return view

    def drop(self, schema: str, name: str) -> bool:
        if self.table.get((schema, name)) is None:
            return False
        self.table.write(deletes=[(schema, name)])
        return True

"""The state assets, generated from the configuration at load time (SPEC §9): per schema ``S``,
``S/conversion_lineage`` → ``S/partition_status`` → ``S/generated_model``, and
``aperio/catalog_views`` over every schema. Each runs one step of the library's refresh
(``conversion.refresh``), the same code as ``aperio refresh``; the state tables are written by
``SharedParquetIOManager``.

(No ``from __future__ import annotations`` here: Dagster reads the annotations at runtime.)
"""

from collections.abc import Sequence

import dagster as dg
import polars as pl

from aperio_assets import layout
from aperio_assets.catalog.views import ViewStore
from aperio_assets.config import SchemaConfig
from aperio_assets.conversion.refresh import RefreshResult, SchemaRefresh
from aperio_assets.defs.io_managers import state_table_metadata
from aperio_assets.defs.resources import AperioResource
from aperio_assets.state.access import to_frame
from aperio_assets.state.tables import CONVERSIONS, PARTITION_STATUS, VIEWS

STATE_IO_MANAGER = "aperio_state_io"
CATALOG_VIEWS = dg.AssetKey(["aperio", "catalog_views"])
FILE_STATES = ("converted", "skipped", "failed", "removed")
BATCH_STATES = ("processed", "skipped", "failed", "removed", "pending")


def lineage_key(schema: str) -> dg.AssetKey:
    return dg.AssetKey([schema, "conversion_lineage"])


def status_key(schema: str) -> dg.AssetKey:
    return dg.AssetKey([schema, "partition_status"])


def model_key(schema: str) -> dg.AssetKey:
    return dg.AssetKey([schema, "generated_model"])


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _failures_markdown(result: RefreshResult) -> str:
    failed = result.failed_files
    if not failed:
        return ""
    shown = [(f.table, f.source.rsplit("/", 1)[-1], (f.error or "")[:200]) for f in failed[:20]]
    more = f"\n\n…and {len(failed) - 20} more" if len(failed) > 20 else ""
    return "\n\n**Failed files**\n\n" + _markdown_table(("table", "file", "error"), shown) + more


def _refresh(context: dg.AssetExecutionContext, aperio: AperioResource, schema: str) -> SchemaRefresh:
    return SchemaRefresh(aperio.lake(), aperio.lake().schema(schema), progress=context.log.debug)


def _lineage_dict(frame: pl.DataFrame) -> dict:
    return {row["source_path"]: row for row in frame.iter_rows(named=True)}


def schema_assets(schema: SchemaConfig) -> list[dg.AssetsDefinition]:
    """The three assets of one schema."""
    name = schema.name
    common = {"group_name": name, "kinds": {"parquet", "polars"} if schema.state_storage == "shared"
              else {"duckdb", "json"}}

    @dg.asset(key=lineage_key(name), io_manager_key=STATE_IO_MANAGER,
              metadata=state_table_metadata(name, CONVERSIONS.name),
              description=f"Conversion lineage of schema {name}: converts new and changed raw files to "
                          "Parquet and records source → target, size, mtime, etag and row count.", **common)
    def conversion_lineage(context: dg.AssetExecutionContext, aperio: AperioResource) -> dg.Output[pl.DataFrame]:
        run = _refresh(context, aperio, name)
        state = aperio.state(name, CONVERSIONS.name)
        lineage = {r["source_path"]: r for r in state.rows()}
        files_before = state.file_count()  # before the groups below are written
        written = {"rows": 0, "deletes": 0}

        def record(rows: list, gone: list) -> None:
            # Each group of conversions is recorded as it completes (as the CLI does), so a run
            # killed midway keeps the lineage of what it converted; the IO manager has nothing left.
            state.apply(rows, [(p,) for p in gone])
            written["rows"] += len(rows)
            written["deletes"] += len(gone)

        run.convert_files(lineage, record)
        result = run.result
        counts = {f"files {s}": result.count("files", s) for s in FILE_STATES}
        summary = _markdown_table(("tables", *FILE_STATES), [(result.tables, *counts.values())])
        if result.failed_files:
            context.log.warning(f"{len(result.failed_files)} file(s) of schema {name} failed to convert; "
                                "they are tried again on every run")
        recorded = {"rows written": written["rows"], "rows deleted": written["deletes"]}
        if files_before is not None:
            recorded["state files before"] = files_before
        # Nothing is left for the IO manager to write: it adds the table's row count and file count.
        return dg.Output(to_frame(CONVERSIONS, [], []),
                         metadata={**counts, "tables": result.tables, "ignored files": len(result.ignored_files),
                                   **recorded, "summary": dg.MetadataValue.md(summary + _failures_markdown(result))})

    @dg.asset(key=status_key(name), io_manager_key=STATE_IO_MANAGER,
              ins={"lineage": dg.AssetIn(lineage_key(name))},
              metadata=state_table_metadata(name, PARTITION_STATUS.name),
              description=f"Partition status of schema {name}: one row per batch (Hive partition) of every "
                          "table, re-marked when its files changed.", **common)
    def partition_status(context: dg.AssetExecutionContext, aperio: AperioResource,
                         lineage: pl.DataFrame) -> dg.Output[pl.DataFrame]:
        run = _refresh(context, aperio, name)
        marks, deletes = run.process_batches(_lineage_dict(lineage), aperio.state(name, PARTITION_STATUS.name).rows())
        result = run.result
        counts = {f"batches {s}": result.count("batches", s) for s in BATCH_STATES}
        per_table: dict[str, dict[str, int]] = {}
        for outcome in result.batches:
            per_table.setdefault(outcome.table, dict.fromkeys(BATCH_STATES, 0))[outcome.status] += 1
        summary = _markdown_table(("table", *BATCH_STATES), [(t, *c.values()) for t, c in sorted(per_table.items())])
        return dg.Output(to_frame(PARTITION_STATUS, marks, deletes),
                         metadata={**counts, "summary": dg.MetadataValue.md(summary or "no tables")})

    @dg.asset(key=model_key(name), ins={"lineage": dg.AssetIn(lineage_key(name))}, deps=[status_key(name)],
              description=f"generated-model.json of schema {name}: tables, columns, row counts.", **common)
    def generated_model(context: dg.AssetExecutionContext, aperio: AperioResource,
                        lineage: pl.DataFrame) -> dg.MaterializeResult:
        run = _refresh(context, aperio, name)
        written = run.write_model(_lineage_dict(lineage))
        path = aperio.storage().aperio_path(name, layout.GENERATED_MODEL)
        tables = run.model["tables"] if run.model else []
        rows = [(t["name"], t["rowCount"], len(t["columns"]), t["files"], t["failedFiles"]) for t in tables]
        return dg.MaterializeResult(metadata={
            "model written": written, "tables": len(tables), "dagster/row_count": sum(t["rowCount"] for t in tables),
            "path": dg.MetadataValue.path(path),
            "summary": dg.MetadataValue.md(_markdown_table(("table", "rows", "columns", "files", "failed files"),
                                                           rows) if rows else "no tables")})

    return [conversion_lineage, partition_status, generated_model]


def catalog_views_asset(schemas: Sequence[SchemaConfig]) -> dg.AssetsDefinition:
    @dg.asset(key=CATALOG_VIEWS, io_manager_key=STATE_IO_MANAGER, group_name="aperio", kinds={"duckdb", "parquet"},
              deps=[model_key(s.name) for s in schemas], metadata=state_table_metadata(None, VIEWS.name),
              description="View definitions of the catalog: one generated view per table of every generated "
                          "model, beside user and migrated views (which are kept).")
    def catalog_views(context: dg.AssetExecutionContext, aperio: AperioResource) -> dg.Output[pl.DataFrame]:
        upserts, stale, summary = ViewStore(aperio.lake()).plan_rebuild()
        table = _markdown_table(("views", "written", "removed", "unchanged", "shadowed by user views"),
                                [(summary["views"], summary["written"], summary["removed"], summary["unchanged"],
                                  summary["shadowedByUserViews"])])
        return dg.Output(to_frame(VIEWS, upserts, stale),
                         metadata={"views written": summary["written"], "views removed": summary["removed"],
                                   "views unchanged": summary["unchanged"],
                                   "views shadowed by user views": summary["shadowedByUserViews"],
                                   "summary": dg.MetadataValue.md(table)})

    return catalog_views

"""The state assets, generated from the configuration at load time (DESIGN §9): per schema ``S``,
``S/conversion_lineage`` → ``S/partition_status`` (both partitioned by the schema's batches, see
``defs/partitions.py``) → ``S/generated_model``, and ``aperio/catalog_views`` over every schema.
Each runs one step of the library's refresh (``conversion.batches``, the same code as
``aperio refresh``); the state tables are written through ``SharedParquetIOManager`` or, row groups
recorded as the step goes, by the step itself.

(No ``from __future__ import annotations`` here: Dagster reads the annotations at runtime.)
"""

import logging
from collections.abc import Sequence

import dagster as dg
import polars as pl

from aperio_assets import layout
from aperio_assets.catalog.views import ViewStore
from aperio_assets.config import SchemaConfig
from aperio_assets.conversion.batches import Batch, convert_batches, finish_schema, mark_batches, select_batches
from aperio_assets.conversion.refresh import FileOutcome, SchemaRefresh
from aperio_assets.defs.io_managers import state_table_metadata
from aperio_assets.defs.partitions import AssetJob, batch_policy, batches_job_name, batches_partitions, slice_of
from aperio_assets.defs.resources import AperioResource
from aperio_assets.state.access import StateAccess
from aperio_assets.state.frames import to_frame
from aperio_assets.state.lineage import Row
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


def _failures_markdown(failed: Sequence[FileOutcome]) -> str:
    if not failed:
        return ""
    shown = [(f.table, f.source.rsplit("/", 1)[-1], (f.error or "")[:200]) for f in failed[:20]]
    more = f"\n\n…and {len(failed) - 20} more" if len(failed) > 20 else ""
    return "\n\n**Failed files**\n\n" + _markdown_table(("table", "file", "error"), shown) + more


# A refresh's per-file progress goes to a Python logger, not to the run's event log: there, each line
# was a write to the instance's storage (~30 ms on PostgreSQL: a third of a batch run's time). The
# run's events say what a step did; to see every file in the UI too, name ``aperio_assets`` in the
# instance's ``python_logs.managed_python_loggers`` (DESIGN §9).
file_progress = logging.getLogger("aperio_assets.progress").debug


def _refresh(aperio: AperioResource, schema: str) -> SchemaRefresh:
    return SchemaRefresh(aperio.lake(), aperio.lake().schema(schema), progress=file_progress)


LINEAGE_OUTPUT = "conversion_lineage"
STATUS_OUTPUT = "partition_status"


def batches_step_name(schema: str) -> str:
    """The op (and step key) that converts and marks a schema's batches."""
    return f"{schema}__batches"


def _convert_output(
    context: dg.AssetExecutionContext,
    run: SchemaRefresh,
    state: StateAccess,
    selected: dict[str, Batch],
    unknown: list[str],
    lineage: dict[str, Row],
) -> dg.Output[pl.DataFrame]:
    """Convert what the selected batches need; ``lineage`` is updated in place."""
    name = run.schema.name
    files_before = state.file_count(fresh=False)  # as the step's read saw them: before its groups
    written = {"rows": 0, "deletes": 0}

    def record(rows: list, gone: list) -> None:
        # Each group of conversions is recorded as it completes (as the CLI does), so a run
        # killed midway keeps the lineage of what it converted; the IO manager has nothing left.
        state.apply(rows, [(p,) for p in gone])
        written["rows"] += len(rows)
        written["deletes"] += len(gone)

    convert_batches(run, selected, lineage, record)
    paths = {f.path for b in selected.values() for f in b.files}
    outcomes = [o for o in run.result.files if o.source in paths]
    counts = {f"files {s}": sum(1 for o in outcomes if o.status == s) for s in FILE_STATES}
    summary = _markdown_table(("batches", *FILE_STATES), [(len(selected), *counts.values())])
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        context.log.warning(
            f"{len(failed)} file(s) of schema {name} failed to convert; their batches are marked failed"
        )
    recorded = {"rows written": written["rows"], "rows deleted": written["deletes"]}
    if files_before is not None:
        recorded["state files before"] = files_before
    if unknown:
        recorded["batches gone"] = dg.MetadataValue.json(unknown)
    # Nothing is left for the IO manager to write: it adds the table's row count and file count.
    return dg.Output(
        to_frame(CONVERSIONS, [], []),
        output_name=LINEAGE_OUTPUT,
        metadata={
            **counts,
            "batches": len(selected),
            **recorded,
            "summary": dg.MetadataValue.md(summary + _failures_markdown(failed)),
        },
    )


def _status_output(
    context: dg.AssetExecutionContext,
    run: SchemaRefresh,
    status: StateAccess,
    selected: dict[str, Batch],
    lineage: dict[str, Row],
) -> dg.Output[pl.DataFrame]:
    """The selected batches' marks, as the output; raises ``dg.Failure`` (the marks recorded, the good
    batches reported materialized) when a batch has a file that failed."""
    name = run.schema.name
    marks, failed = mark_batches(run, selected, lineage, status.rows())
    counts: dict[str, object] = {
        f"batches {s}": sum(1 for o in run.result.batches if o.status == s) for s in BATCH_STATES
    }
    files_before = status.file_count(fresh=False)  # as the read above saw them: no LIST for it
    if files_before is not None:
        counts["state files before"] = files_before
    per_table: dict[str, dict[str, int]] = {}
    for outcome in run.result.batches:
        per_table.setdefault(outcome.table, dict.fromkeys(BATCH_STATES, 0))[outcome.status] += 1
    counts["summary"] = dg.MetadataValue.md(
        _markdown_table(("table", *BATCH_STATES), [(t, *c.values()) for t, c in sorted(per_table.items())])
        or "no batches"
    )
    if failed:
        # The marks (errors included) are recorded, the good batches reported materialized, and
        # the step fails: the failed batches show as failed partitions, to be retried alone.
        status.apply(marks, [])
        for key in context.partition_keys:
            if key not in failed:
                context.log_event(dg.AssetMaterialization(status_key(name), partition=key))
        raise dg.Failure(
            description=f"{len(failed)} batch(es) of schema {name} failed: "
            + "; ".join(f"{k}: {e}" for k, e in sorted(failed.items())[:10]),
            metadata={"failed batches": dg.MetadataValue.json(failed), **counts},
        )
    return dg.Output(to_frame(PARTITION_STATUS, marks, []), output_name=STATUS_OUTPUT, metadata=counts)


# The model and the views follow their batches: once per wave of batch runs (after every run of the
# wave has finished, failed batches included: one bad file must not hold back the catalog), run by
# Dagster's automation sensor (``aperio_automation_sensor``), or at the end of
# ``python -m aperio_assets.defs.launch``. In progress is asked first: a tick reads the runs asset by
# asset, not at one moment, and what it reads is kept for the tick. A batch run ending during the
# tick is then either in progress for the model and for the views (both wait), or over before the
# model asked whether its batches were updated (it runs). Asked after "updated", a run ending in
# between made the model see no update and the views, asking later, no batch in progress: the views
# were built from that model as it was (the deployment test saw a migrated view lose a table).
AFTER_BATCHES = (
    ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
    & dg.AutomationCondition.any_deps_updated().since_last_handled()
).with_label("after its batches")
# The views read every schema's model: they wait for the batches of every schema, not only for the
# models (a schema's model waits for its own batches only), so that they are built once per wave and
# a view reading another schema's tables (a migrated one, say) finds them.
AFTER_EVERY_SCHEMAS_BATCHES = (
    ~dg.AutomationCondition.any_deps_match(dg.AutomationCondition.any_deps_in_progress()) & AFTER_BATCHES
).with_label("after every schema's batches")


def schema_assets(schema: SchemaConfig) -> list[dg.AssetsDefinition]:
    """The three assets of one schema: lineage and status partitioned by batch, the model not."""
    name = schema.name
    common = {
        "group_name": name,
        "kinds": {"parquet", "polars"} if schema.shared else {"duckdb", "json"},
    }
    batches = batches_partitions(name)

    @dg.multi_asset(
        name=batches_step_name(name),
        outs={
            LINEAGE_OUTPUT: dg.AssetOut(
                key=lineage_key(name),
                is_required=False,  # (either asset may be selected alone)
                io_manager_key=STATE_IO_MANAGER,
                metadata=state_table_metadata(name, CONVERSIONS.name),
                description=f"Conversion lineage of schema {name}, per batch: converts the batch's new and changed "
                "raw files to Parquet and records source → target, size, mtime, etag and row count.",
                kinds=common["kinds"],
            ),
            STATUS_OUTPUT: dg.AssetOut(
                key=status_key(name),
                is_required=False,
                io_manager_key=STATE_IO_MANAGER,
                metadata=state_table_metadata(name, PARTITION_STATUS.name),
                description=f"Partition status of schema {name}: one row per batch (Hive partition) of every "
                "table, re-marked when its files changed. A batch with a file that failed to convert "
                "is marked in error and its partition fails.",
                kinds=common["kinds"],
            ),
        },
        internal_asset_deps={STATUS_OUTPUT: {lineage_key(name)}},
        partitions_def=batches,
        backfill_policy=batch_policy(),
        can_subset=True,
        group_name=name,
        description=f"Converts and marks a range of schema {name}'s batches in one step: the schema is listed "
        "once and each state table read once for both assets.",
    )
    def batches_step(context: dg.AssetExecutionContext, aperio: AperioResource):  # yields its outputs
        # One step for both assets: one listing of the schema and one read of each state table serve
        # the conversions and the marks (DESIGN §9). Either asset may be selected alone.
        run = _refresh(aperio, name)
        part = slice_of(context.run.tags)
        if part is not None:  # (its planner's: the slice of the listing that holds these batches)
            run.list_only(part)
        selected, unknown = select_batches(run, context.partition_keys)
        conversions = aperio.state(name, CONVERSIONS.name)
        lineage = {r["source_path"]: r for r in conversions.rows()}
        if lineage_key(name) in context.selected_asset_keys:
            yield _convert_output(context, run, conversions, selected, unknown, lineage)
        if status_key(name) in context.selected_asset_keys:
            yield _status_output(context, run, aperio.state(name, PARTITION_STATUS.name), selected, lineage)

    @dg.asset(
        key=model_key(name),
        deps=[status_key(name)],
        automation_condition=AFTER_BATCHES,
        description=f"generated-model.json of schema {name}: tables, columns, row counts. Runs after "
        "its batches: forgets raw files and batches that are gone, then writes the model.",
        **common,
    )
    def generated_model(context: dg.AssetExecutionContext, aperio: AperioResource) -> dg.MaterializeResult:
        run = _refresh(aperio, name)
        removed, vanished = finish_schema(run)
        path = aperio.storage().aperio_path(name, layout.GENERATED_MODEL)
        tables = run.model["tables"] if run.model else []
        rows = [(t["name"], t["rowCount"], len(t["columns"]), t["files"], t["failedFiles"]) for t in tables]
        return dg.MaterializeResult(
            metadata={
                "model written": run.result.model_written,
                "tables": len(tables),
                "dagster/row_count": sum(t["rowCount"] for t in tables),
                "files removed": len(removed),
                "batches removed": vanished,
                "ignored files": len(run.result.ignored_files),
                "path": dg.MetadataValue.path(path),
                "summary": dg.MetadataValue.md(
                    _markdown_table(("table", "rows", "columns", "files", "failed files"), rows)
                    if rows
                    else "no tables"
                ),
            }
        )

    return [batches_step, generated_model]


def batches_job(schema: str) -> AssetJob:
    """Converts and marks a range of the schema's batches (the sensor's and the launcher's runs)."""
    return dg.define_asset_job(
        batches_job_name(schema),
        selection=dg.AssetSelection.assets(lineage_key(schema), status_key(schema)),
        description=f"Convert and mark a range of schema {schema}'s batches.",
    )


def catalog_views_asset(schemas: Sequence[SchemaConfig]) -> dg.AssetsDefinition:
    @dg.asset(
        key=CATALOG_VIEWS,
        io_manager_key=STATE_IO_MANAGER,
        group_name="aperio",
        kinds={"duckdb", "parquet"},
        deps=[model_key(s.name) for s in schemas],
        metadata=state_table_metadata(None, VIEWS.name),
        automation_condition=AFTER_EVERY_SCHEMAS_BATCHES,
        description="View definitions of the catalog: one generated view per table of every generated "
        "model, beside user and migrated views (which are kept).",
    )
    def catalog_views(context: dg.AssetExecutionContext, aperio: AperioResource) -> dg.Output[pl.DataFrame]:
        upserts, stale, summary = ViewStore(aperio.lake()).plan_rebuild()
        table = _markdown_table(
            ("views", "written", "removed", "unchanged", "shadowed by user views"),
            [
                (
                    summary.views,
                    summary.written,
                    summary.removed,
                    summary.unchanged,
                    summary.shadowed_by_user_views,
                )
            ],
        )
        return dg.Output(
            to_frame(VIEWS, upserts, stale),
            metadata={
                "views written": summary.written,
                "views removed": summary.removed,
                "views unchanged": summary.unchanged,
                "views shadowed by user views": summary.shadowed_by_user_views,
                "summary": dg.MetadataValue.md(table),
            },
        )

    return catalog_views

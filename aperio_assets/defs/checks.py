"""Asset checks (DESIGN §9): state health of every state table (no unreadable files, small files
under the limit), every view of the catalog resolves, and every raw file converts.

(No ``from __future__ import annotations`` here: Dagster reads the annotations at runtime.)
"""

from collections.abc import Sequence

import dagster as dg

from aperio_assets.catalog.binding import resolve_errors
from aperio_assets.catalog.connect import TABLES_CATALOG, bind_error
from aperio_assets.catalog.views import ViewStore
from aperio_assets.config import SchemaConfig
from aperio_assets.defs.assets import CATALOG_VIEWS, model_key
from aperio_assets.defs.resources import AperioResource
from aperio_assets.state.access import SharedStateAccess
from aperio_assets.state.tables import CONVERSIONS, PARTITION_STATUS, TABLE_COMPLETION, VIEWS


def state_health_check(
    asset: dg.AssetKey, schema: str | None, tables: Sequence[str], name: str = "state_health"
) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset,
        name=name,
        description=f"State table(s) {', '.join(tables)}: every file readable, no more small "
        "files than compaction.max_small_files.",
    )
    def state_health(aperio: AperioResource) -> dg.AssetCheckResult:
        metadata: dict[str, object] = {}
        unreadable: dict[str, str] = {}
        over_limit = []
        for name in tables:
            state = aperio.state(schema, name)
            if not isinstance(state, SharedStateAccess):
                metadata[f"{name} mode"] = "local (legacy file: no state files to check)"
                continue
            stats = state.table.stats()
            limit = state.table.max_small_files
            metadata.update(
                {
                    f"{name} files": stats.files,
                    f"{name} small files": stats.small_files,
                    f"{name} live rows": stats.live_rows,
                }
            )
            metadata["small file limit"] = limit
            unreadable.update(stats.bad_files)
            if stats.small_files > limit:
                over_limit.append(f"{name}: {stats.small_files} small files > {limit}")
        metadata["unreadable files"] = dg.MetadataValue.json(unreadable)
        problems = (
            [f"{len(unreadable)} unreadable state file(s); `aperio doctor --repair` quarantines them"]
            if unreadable
            else []
        )
        problems += over_limit
        metadata["problems"] = dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none")
        return dg.AssetCheckResult(
            passed=not problems,
            metadata=metadata,
            severity=dg.AssetCheckSeverity.ERROR if unreadable else dg.AssetCheckSeverity.WARN,
        )

    return state_health


@dg.asset_check(
    asset=CATALOG_VIEWS,
    name="views_resolve",
    description="Every view definition binds, and every view reads its files now.",
)
def views_resolve(aperio: AperioResource) -> dg.AssetCheckResult:
    lake = aperio.lake()
    con, report = aperio.catalog()
    broken: dict[str, str] = {}
    try:
        # The catalog caches bound views (and the list of those that did not bind), so a health
        # check looks at the files as they are now: every view of the connection is resolved again
        # (but those this very connect just bound into a new build: that was now), and every
        # cached failure is tried again for its reason now.
        names = con.execute(
            "SELECT schema_name, view_name FROM duckdb_views() "
            f"WHERE database_name = '{TABLES_CATALOG}' AND NOT internal ORDER BY ALL"
        ).fetchall()
        just_bound = set(report.bound) - set(report.broken)
        again = [(schema, view) for schema, view in names if f"{schema}.{view}" not in just_bound]
        definitions = {f"{v.schema_name}.{v.view_name}": v for v in ViewStore(lake).list()}
        generated = {key for key, v in definitions.items() if v.origin == "generated"}
        broken.update(resolve_errors(con, again, independent=generated))
        schemas = {s.name for s in lake.schemas()}
        for key, cached in report.broken.items():
            definition = definitions.get(key)
            if definition is None or definition.schema_name not in schemas:
                broken[key] = cached  # no longer defined, or its schema is not configured: said now
                continue
            reason = bind_error(con, definition)
            # (a cached failure that binds now makes the catalog rebuild itself; one that binds a
            # moment later, after this connection was opened, is still missing from it)
            broken[key] = (
                reason
                if reason is not None
                else (f"missing from this connection's catalog ({cached}), but binds now: the next connection has it")
            )
    finally:
        con.close()
    return dg.AssetCheckResult(
        passed=not broken,
        metadata={
            "views": len(names) + len(report.broken),
            "views bound by this check": len(names) - len(again),
            "broken views": len(broken),
            "errors": dg.MetadataValue.json(dict(sorted(broken.items()))),
            "s3 access": report.s3_access or "local",
            "catalog cache": report.cache,
        },
    )


def conversions_check(schema: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=model_key(schema),
        name="conversions_succeed",
        description=f"Every raw file of schema {schema} converts: no conversion lineage row "
        "holds an error (a failed file is tried again on every run until it converts).",
    )
    def conversions_succeed(aperio: AperioResource) -> dg.AssetCheckResult:
        failed = sorted(
            (r for r in aperio.state(schema, CONVERSIONS.name).rows() if r.get("error")), key=lambda r: r["source_path"]
        )
        shown = [
            {"table": r.get("table_name"), "file": r["source_path"], "error": str(r["error"])[:500]}
            for r in failed[:100]
        ]
        return dg.AssetCheckResult(
            passed=not failed,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"failed files": len(failed), "failures": dg.MetadataValue.json(shown)},
        )

    return conversions_succeed


# The view definitions' two checks depend on no configuration: defined here once, loaded with the
# defs folder (``views_resolve`` above is the other).
views_state_health = state_health_check(CATALOG_VIEWS, None, [VIEWS.name])


def lake_checks(schemas: Sequence[SchemaConfig]) -> list[dg.AssetChecksDefinition]:
    """The checks of each schema, all on its model (unpartitioned: it runs once after its batches),
    so each runs once per wave of runs, not once per batch."""
    checks: list[dg.AssetChecksDefinition] = []
    for schema in schemas:
        checks.append(
            state_health_check(model_key(schema.name), schema.name, [CONVERSIONS.name], name="lineage_state_health")
        )
        checks.append(conversions_check(schema.name))
        checks.append(
            state_health_check(
                model_key(schema.name),
                schema.name,
                [PARTITION_STATUS.name, TABLE_COMPLETION.name],
                name="status_state_health",
            )
        )
    return checks

"""Asset checks (SPEC §9): state health of every state table (no unreadable files, small files
under the limit) and every view of the catalog resolves.

(No ``from __future__ import annotations`` here: Dagster reads the annotations at runtime.)
"""

from collections.abc import Sequence

import dagster as dg
import duckdb

from aperio_assets.catalog.connect import TABLES_CATALOG
from aperio_assets.config import SchemaConfig
from aperio_assets.defs.assets import CATALOG_VIEWS, lineage_key, status_key
from aperio_assets.defs.resources import AperioResource
from aperio_assets.sqlutil import quote_identifier
from aperio_assets.state.access import SharedStateAccess
from aperio_assets.state.tables import CONVERSIONS, PARTITION_STATUS, TABLE_COMPLETION, VIEWS


def state_health_check(asset: dg.AssetKey, schema: str | None, tables: Sequence[str]) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=asset, name="state_health",
                    description=f"State table(s) {', '.join(tables)}: every file readable, no more small "
                                "files than compaction.max_small_files.")
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
            metadata.update({f"{name} files": stats.files, f"{name} small files": stats.small_files,
                             f"{name} live rows": stats.live_rows})
            metadata["small file limit"] = limit
            unreadable.update(stats.bad_files)
            if stats.small_files > limit:
                over_limit.append(f"{name}: {stats.small_files} small files > {limit}")
        metadata["unreadable files"] = dg.MetadataValue.json(unreadable)
        problems = [f"{len(unreadable)} unreadable state file(s); `aperio doctor --repair` quarantines them"] \
            if unreadable else []
        problems += over_limit
        metadata["problems"] = dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none")
        return dg.AssetCheckResult(passed=not problems, metadata=metadata,
                                   severity=dg.AssetCheckSeverity.ERROR if unreadable else dg.AssetCheckSeverity.WARN)

    return state_health


@dg.asset_check(asset=CATALOG_VIEWS, name="views_resolve",
                description="Every view definition binds, and every view reads its files now.")
def views_resolve(aperio: AperioResource) -> dg.AssetCheckResult:
    con, report = aperio.catalog()
    try:
        # The catalog caches bound views; a health check must look at the files as they are now, so
        # each view is queried (its files listed and their footers read), not just remembered.
        broken = dict(report.broken)
        names = con.execute("SELECT schema_name, view_name FROM duckdb_views() "
                            f"WHERE database_name = '{TABLES_CATALOG}' AND NOT internal ORDER BY ALL").fetchall()
        for schema, view in names:
            try:
                con.execute(f"SELECT count(*) FROM {quote_identifier(schema)}.{quote_identifier(view)}").fetchall()
            except duckdb.Error as exc:
                broken[f"{schema}.{view}"] = str(exc).strip().splitlines()[0]
    finally:
        con.close()
    return dg.AssetCheckResult(
        passed=not broken,
        metadata={"views": len(names) + len(report.broken), "broken views": len(broken),
                  "errors": dg.MetadataValue.json(broken), "s3 access": report.s3_access or "local"})


def lake_checks(schemas: Sequence[SchemaConfig]) -> list[dg.AssetChecksDefinition]:
    checks = [state_health_check(CATALOG_VIEWS, None, [VIEWS.name]), views_resolve]
    for schema in schemas:
        checks.append(state_health_check(lineage_key(schema.name), schema.name, [CONVERSIONS.name]))
        checks.append(state_health_check(status_key(schema.name), schema.name,
                                         [PARTITION_STATUS.name, TABLE_COMPLETION.name]))
    return checks

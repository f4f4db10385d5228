"""What `aperio status` reports: configuration, schemas, modes and what exists under ``.aperio/``."""

from __future__ import annotations

from typing import Any

from aperio_assets import layout
from aperio_assets.lake import Lake
from aperio_assets.state.maintenance import state_health
from aperio_assets.storage import FileInfo


def _summarize(files: list[FileInfo]) -> dict[str, int]:
    return {"files": len(files), "bytes": sum(f.size for f in files)}


def lake_status(lake: Lake) -> dict[str, Any]:
    """A JSON-ready description of the lake; credentials never appear in it."""
    lake.check()
    config, storage = lake.config, lake.storage
    report: dict[str, Any] = {
        "config": config.source,
        "baseDirectory": config.base_directory,
        "aperioDirectory": config.aperio_directory,
        "legacyDirectory": config.legacy_directory,
        "stateStorage": config.state_storage,
        "storage": storage.describe(),
    }
    if config.is_s3 or storage.scheme == "s3":
        report["s3"] = {"endpoint_url": config.s3.endpoint_url, "region": config.s3.region}

    root_entries = {e.name: e for e in storage.list(config.aperio_directory)}
    report["aperioDirectoryExists"] = bool(root_entries) or storage.exists(config.aperio_directory)
    root: dict[str, Any] = {}
    for name in layout.ROOT_ENTRIES:
        if name in root_entries:
            root[name] = _summarize(storage.list(storage.aperio_path(None, name), recursive=True))
    legacy_catalog = (
        [name for name in layout.LEGACY_ROOT_FILES if storage.exists(storage.aperio_path(None, name))]
        if ".duckdb" in root_entries
        else []
    )
    report["root"] = root
    report["legacyCatalog"] = legacy_catalog
    report["migrations"] = (
        sorted(f.name.removesuffix(".json") for f in storage.list(storage.aperio_path(None, layout.MIGRATIONS_DIR)))
        if layout.MIGRATIONS_DIR in root_entries
        else []
    )

    health = state_health(lake)
    report["catalogStateTables"] = health.get(None, {})
    schemas = []
    for schema in lake.schemas():
        entry: dict[str, Any] = {
            "name": schema.name,
            "directory": schema.directory,
            "stateStorage": schema.state_storage,
            "legacyFiles": [],
            "stateTables": health.get(schema.name, {}),
            "other": {},
        }
        if schema.name in root_entries:
            for item in storage.list(storage.aperio_path(schema.name)):
                if item.name in layout.LEGACY_SCHEMA_FILES:
                    entry["legacyFiles"].append(item.name)
                elif item.is_dir and item.name not in layout.SCHEMA_STATE_TABLES:
                    entry["other"][item.name] = _summarize(storage.list(item.path, recursive=True))
                elif not item.is_dir:
                    entry["other"][item.name] = {"files": 1, "bytes": item.size}
        schemas.append(entry)
    report["schemas"] = schemas
    return report

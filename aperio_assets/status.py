"""What `aperio status` reports: configuration, schemas, modes and what exists under ``.aperio/``
(the CLI shapes it for the terminal or as JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aperio_assets import layout
from aperio_assets.lake import Lake
from aperio_assets.state.maintenance import TableHealth, state_health
from aperio_assets.storage import FileInfo


@dataclass(frozen=True)
class FilesSummary:
    files: int
    bytes: int

    @classmethod
    def of(cls, files: list[FileInfo]) -> FilesSummary:
        return cls(len(files), sum(f.size for f in files))


@dataclass
class SchemaStatus:
    name: str
    directory: str
    state_storage: str
    legacy_files: list[str] = field(default_factory=list)
    state_tables: dict[str, TableHealth] = field(default_factory=dict)
    other: dict[str, FilesSummary] = field(default_factory=dict)  # anything else under .aperio/<schema>/


@dataclass
class LakeStatus:
    """A description of the lake; credentials never appear in it."""

    config: str
    base_directory: str
    aperio_directory: str
    legacy_directory: str | None
    state_storage: str
    storage: str
    s3_endpoint: tuple[str | None, str | None] | None  # (endpoint URL, region) when S3 is involved
    aperio_directory_exists: bool
    root: dict[str, FilesSummary]
    legacy_catalog: list[str]
    migrations: list[str]
    catalog_state_tables: dict[str, TableHealth]
    schemas: list[SchemaStatus]


def lake_status(lake: Lake) -> LakeStatus:
    """What exists for ``lake``: checks the lake's locations first (a missing one is an error)."""
    lake.check()
    config, storage = lake.config, lake.storage
    root_entries = {e.name: e for e in storage.list(config.aperio_directory)}
    root = {
        name: FilesSummary.of(storage.list(storage.aperio_path(None, name), recursive=True))
        for name in layout.ROOT_ENTRIES
        if name in root_entries
    }
    legacy_catalog = (
        [name for name in layout.LEGACY_ROOT_FILES if storage.exists(storage.aperio_path(None, name))]
        if ".duckdb" in root_entries
        else []
    )
    migrations = (
        sorted(f.name.removesuffix(".json") for f in storage.list(storage.aperio_path(None, layout.MIGRATIONS_DIR)))
        if layout.MIGRATIONS_DIR in root_entries
        else []
    )
    health = state_health(lake)
    schemas = []
    for schema in lake.schemas():
        entry = SchemaStatus(
            schema.name, schema.directory, schema.state_storage, state_tables=health.get(schema.name, {})
        )
        if schema.name in root_entries:
            for item in storage.list(storage.aperio_path(schema.name)):
                if item.name in layout.LEGACY_SCHEMA_FILES:
                    entry.legacy_files.append(item.name)
                elif item.is_dir and item.name not in layout.SCHEMA_STATE_TABLES:
                    entry.other[item.name] = FilesSummary.of(storage.list(item.path, recursive=True))
                elif not item.is_dir:
                    entry.other[item.name] = FilesSummary(1, item.size)
        schemas.append(entry)
    return LakeStatus(
        config=config.source,
        base_directory=config.base_directory,
        aperio_directory=config.aperio_directory,
        legacy_directory=config.legacy_directory,
        state_storage=config.state_storage,
        storage=storage.describe(),
        s3_endpoint=(config.s3.endpoint_url, config.s3.region) if config.is_s3 or storage.scheme == "s3" else None,
        aperio_directory_exists=bool(root_entries) or storage.exists(config.aperio_directory),
        root=root,
        legacy_catalog=legacy_catalog,
        migrations=migrations,
        catalog_state_tables=health.get(None, {}),
        schemas=schemas,
    )

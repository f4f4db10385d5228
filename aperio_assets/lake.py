"""The entry object for a configured lake: its configuration, storage providers and schemas."""

from __future__ import annotations

import logging
import os
from functools import cached_property

from aperio_assets.config import (
    RESERVED_SCHEMA_NAMES,
    SAFE_IDENTIFIER,
    AperioConfig,
    SchemaConfig,
    is_s3_url,
    load_config,
)
from aperio_assets.errors import ConfigError, LocationNotFound, UsageError
from aperio_assets.storage import StorageProvider, open_storage

log = logging.getLogger(__name__)

ConfigLike = AperioConfig | str | os.PathLike[str] | None


class Lake:
    """A configured lake. ``storage`` serves ``.aperio/``; ``lake_storage`` serves the raw files."""

    def __init__(self, config: AperioConfig) -> None:
        self.config = config
        # The shared state tables opened on this lake, by directory (``state.access`` fills it): a
        # table read twice in one step (an asset, then its IO manager) fetches only the new files.
        self.state_tables: dict[str, object] = {}

    @cached_property
    def storage(self) -> StorageProvider:
        return open_storage(self.config.aperio_directory, self.config.s3, aperio_root=self.config.aperio_directory)

    @cached_property
    def lake_storage(self) -> StorageProvider:
        if is_s3_url(self.config.base_directory) == is_s3_url(self.config.aperio_directory):
            return self.storage
        return open_storage(self.config.base_directory, self.config.s3)

    @cached_property
    def local_state_directory(self) -> str:
        """Where local (legacy) mode keeps its single-node files: ``legacyDirectory`` if set, else a
        local ``aperioDirectory``, else (an S3 lake in local mode) a per-lake folder under
        ``~/.cache/aperio`` — state that, as the config warning says, no other machine sees."""
        for candidate in (self.config.legacy_directory, self.config.aperio_directory):
            if candidate and not is_s3_url(candidate):
                return candidate
        bucket_and_prefix = self.config.aperio_directory.split("://", 1)[1]
        return os.path.join(os.path.expanduser("~"), ".cache", "aperio", bucket_and_prefix)

    def local_state_path(self, schema: str, name: str) -> str:
        """A local-mode (legacy) state file of a schema, e.g. its ``.partition_status.duckdb``."""
        return os.path.join(self.local_state_directory, schema, name)

    def check(self) -> None:
        """Fail early, with the config key named, when the lake's directory or bucket does not exist;
        unreachable storage or refused credentials raise StorageUnavailable naming endpoint and bucket."""
        try:
            self.lake_storage.check(self.config.base_directory)
        except LocationNotFound as exc:
            raise ConfigError(self.config.source, "baseDirectory", str(exc)) from None
        # A local .aperio/ is created on first write; an S3 one needs its bucket.
        if is_s3_url(self.config.aperio_directory):
            try:
                self.storage.check(self.config.aperio_directory)
            except LocationNotFound as exc:
                raise ConfigError(self.config.source, "aperioDirectory", str(exc)) from None

    def schemas(self) -> list[SchemaConfig]:
        """The configured schemas, or else every top-level folder of the lake (DESIGN §2), discovered
        once per Lake (one LIST): open a new Lake to see folders added since."""
        if self.config.configured_schemas is not None:
            return list(self.config.configured_schemas)
        return list(self._discovered)

    @cached_property
    def _discovered(self) -> tuple[SchemaConfig, ...]:
        return tuple(self.discover_schemas())

    def discover_schemas(self) -> list[SchemaConfig]:
        aperio_dir = self.config.aperio_directory.rstrip("/")
        found: list[SchemaConfig] = []
        seen: set[str] = set()
        for entry in self.lake_storage.list(self.config.base_directory):
            name = entry.name
            if not entry.is_dir or name.startswith((".", "_")) or entry.path.rstrip("/") == aperio_dir:
                continue
            if not SAFE_IDENTIFIER.match(name) or name.lower() in RESERVED_SCHEMA_NAMES or name.lower() in seen:
                log.warning(
                    "%s: folder %r is not usable as a schema name; list it under `schemas:` "
                    "with a name and directory to include it",
                    self.config.source,
                    name,
                )
                continue
            seen.add(name.lower())
            found.append(SchemaConfig(name=name, directory=entry.path, state_storage=self.config.state_storage))
        return found

    def schema(self, name: str) -> SchemaConfig:
        schemas = self.schemas()
        for schema in schemas:
            if schema.name == name:
                return schema
        known = ", ".join(s.name for s in schemas) or "none"
        raise UsageError(f"unknown schema {name!r} in {self.config.source} (known: {known})")

    def select_schemas(self, name: str | None) -> list[SchemaConfig]:
        """All schemas, or just the named one (``--schema``)."""
        return [self.schema(name)] if name else self.schemas()


def open_lake(config_or_path: ConfigLike | Lake = None) -> Lake:
    """A :class:`Lake` from a loaded config, a config path, or the default lookup."""
    if isinstance(config_or_path, Lake):
        return config_or_path
    config = config_or_path if isinstance(config_or_path, AperioConfig) else load_config(config_or_path)
    return Lake(config)

"""Migration of legacy single-node state into shared state (DESIGN §8)."""

from aperio_assets.migration.migrate import MIGRATION_WRITER, MigrationReport, legacy_fingerprint, migrate

__all__ = ["MIGRATION_WRITER", "MigrationReport", "legacy_fingerprint", "migrate"]

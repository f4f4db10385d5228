"""The DuckDB catalog (DESIGN §7): views bound once into a machine-local cache file, the state as
in-memory snapshots. Public entry point: :func:`connect`."""

from aperio_assets.catalog.connect import CatalogReport, connect, open_catalog
from aperio_assets.catalog.views import ViewDefinition, ViewStore

__all__ = ["CatalogReport", "ViewDefinition", "ViewStore", "connect", "open_catalog"]

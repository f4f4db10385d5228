"""The Dagster resource that gives assets the configured lake."""

from __future__ import annotations

import dagster as dg

from aperio_assets.config import CONFIG_ENV
from aperio_assets.lake import Lake, open_lake
from aperio_assets.storage import StorageProvider


class AperioResource(dg.ConfigurableResource):
    """The lake described by an ``aperio.yaml`` (path from ``$APERIO_CONFIG`` by default)."""

    config_path: str

    def lake(self) -> Lake:
        return open_lake(self.config_path)

    def storage(self) -> StorageProvider:
        return self.lake().storage


def default_aperio_resource() -> AperioResource:
    return AperioResource(config_path=dg.EnvVar(CONFIG_ENV))

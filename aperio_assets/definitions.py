"""The Dagster code location: ``aperio_assets.definitions:defs``."""

from __future__ import annotations

import dagster as dg

from aperio_assets.defs.resources import default_aperio_resource

defs = dg.Definitions(
    resources={"aperio": default_aperio_resource()},
)

"""The Dagster code location: ``aperio_assets.definitions:defs``."""

from __future__ import annotations

import dagster as dg

from aperio_assets.defs.maintenance import (
    compact_state_job,
    compact_state_schedule,
    legacy_state_sensor,
    migrate_legacy_state_job,
    rebuild_views_job,
    rebuild_views_schedule,
)
from aperio_assets.defs.resources import default_aperio_resource

defs = dg.Definitions(
    jobs=[migrate_legacy_state_job, compact_state_job, rebuild_views_job],
    schedules=[compact_state_schedule, rebuild_views_schedule],
    sensors=[legacy_state_sensor],
    resources={"aperio": default_aperio_resource()},
)

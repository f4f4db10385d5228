"""The Dagster code location loads, and its resource opens the configured lake."""

from __future__ import annotations

import importlib
from pathlib import Path

import dagster as dg
import pytest

from aperio_assets.defs.resources import AperioResource


def test_definitions_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lake" / "sales").mkdir(parents=True)
    (tmp_path / "aperio.yaml").write_text("baseDirectory: lake\n")
    monkeypatch.setenv("APERIO_CONFIG", str(tmp_path / "aperio.yaml"))
    import aperio_assets.definitions as module

    # loaded again under this test's configuration (an earlier import may have seen another)
    defs = importlib.reload(module).defs
    with dg.instance_for_test():  # a fresh instance: an earlier test's may be gone
        dg.Definitions.validate_loadable(defs)
    assert "aperio" in defs.resources
    assert {j.name for j in defs.jobs} == {"sales_batches_job", "aperio_catalog_job", "migrate_legacy_state_job",
                                           "compact_state_job", "rebuild_views_job"}
    assert {s.name for s in defs.sensors} == {"legacy_state_sensor", "lake_change_sensor",
                                              "aperio_automation_sensor"}
    assert {s.name for s in defs.schedules} == {"compact_state_schedule", "rebuild_views_schedule"}


def test_resource_gives_the_lake(tmp_path: Path) -> None:
    (tmp_path / "lake" / "sales").mkdir(parents=True)
    (tmp_path / "aperio.yaml").write_text("baseDirectory: lake\n")
    resource = AperioResource(config_path=str(tmp_path / "aperio.yaml"))
    lake = resource.lake()
    assert [s.name for s in lake.schemas()] == ["sales"]
    assert resource.storage().aperio_path("sales", "partition_status") == str(
        tmp_path / "lake" / ".aperio" / "sales" / "partition_status")

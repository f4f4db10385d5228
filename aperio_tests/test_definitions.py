"""The Dagster code location loads, and its resource opens the configured lake."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from aperio_assets.defs.resources import AperioResource


def test_definitions_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lake" / "sales").mkdir(parents=True)
    (tmp_path / "aperio.yaml").write_text("baseDirectory: lake\n")
    monkeypatch.setenv("APERIO_CONFIG", str(tmp_path / "aperio.yaml"))
    import aperio_assets.definitions as module

    # the code location's @dg.definitions function, called as Dagster calls it: it reads this test's
    # configuration now, whatever an earlier import saw
    defs = module.defs()
    with dg.instance_for_test():  # a fresh instance: an earlier test's may be gone
        dg.Definitions.validate_loadable(defs)
    assert "aperio" in defs.resources
    assert {j.name for j in defs.jobs} == {
        "sales_batches_job",
        "aperio_catalog_job",
        "aperio_refresh_job",
        "migrate_legacy_state_job",
        "compact_state_job",
        "catalog_views_job",
    }
    assert {s.name for s in defs.sensors} == {"legacy_state_sensor", "lake_change_sensor", "aperio_automation_sensor"}
    assert {s.name for s in defs.schedules} == {"compact_state_schedule", "catalog_views_schedule"}
    # without $APERIO_SENSOR_INTERVAL_SECONDS, the lake's sensors tick at most once a minute, the
    # automation sensor every 30 s (legacy_state_sensor's interval is read when its module is imported)
    intervals = {s.name: s.minimum_interval_seconds for s in defs.sensors}
    assert {k: v for k, v in intervals.items() if k != "legacy_state_sensor"} == {
        "lake_change_sensor": 60,
        "aperio_automation_sensor": 30,
    }


@pytest.mark.parametrize(("setting", "lake", "automation"), [("7", 7, 7), ("0", 60, 30), ("soon", 60, 30)])
def test_the_sensor_interval_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str, lake: int, automation: int
) -> None:
    """``$APERIO_SENSOR_INTERVAL_SECONDS``, a positive number of seconds, replaces every aperio sensor's
    minimum interval; anything else leaves the defaults."""
    from aperio_assets.definitions import lake_definitions
    from aperio_assets.defs.sensors import LAKE_SENSOR_INTERVAL, SENSOR_INTERVAL_ENV, sensor_interval

    (tmp_path / "lake" / "sales").mkdir(parents=True)
    (tmp_path / "aperio.yaml").write_text("baseDirectory: lake\n")
    monkeypatch.setenv(SENSOR_INTERVAL_ENV, setting)
    defs = lake_definitions(str(tmp_path / "aperio.yaml"))
    assert {s.name: s.minimum_interval_seconds for s in defs.sensors} == {
        "lake_change_sensor": lake,
        "aperio_automation_sensor": automation,
    }
    assert sensor_interval(LAKE_SENSOR_INTERVAL) == lake  # (what legacy_state_sensor is defined with)


def test_resource_gives_the_lake(tmp_path: Path) -> None:
    (tmp_path / "lake" / "sales").mkdir(parents=True)
    (tmp_path / "aperio.yaml").write_text("baseDirectory: lake\n")
    resource = AperioResource(config_path=str(tmp_path / "aperio.yaml"))
    lake = resource.lake()
    assert [s.name for s in lake.schemas()] == ["sales"]
    assert resource.storage().aperio_path("sales", "partition_status") == str(
        tmp_path / "lake" / ".aperio" / "sales" / "partition_status"
    )


def test_without_aperio_config_the_location_and_its_runs_use_the_same_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only ./aperio.yaml, no APERIO_CONFIG: the location loads the schema's assets and its runs
    read that same file (by its absolute path, wherever the run worker starts)."""
    from aperio_assets.definitions import build_defs
    from aperio_assets.defs.launch import refresh_with_runs

    (tmp_path / "lake" / "sales").mkdir(parents=True)
    (tmp_path / "lake" / "sales" / "orders.csv").write_text("id\n1\n2\n")
    (tmp_path / "aperio.yaml").write_text("baseDirectory: lake\n")
    monkeypatch.delenv("APERIO_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    defs = build_defs()
    assert defs.resources["aperio"].config_path == str(tmp_path / "aperio.yaml")
    monkeypatch.chdir(tmp_path / "lake")  # a run worker started elsewhere
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("sales_batches", ["orders"])
        result = defs.resolve_job_def("sales_batches_job").execute_in_process(instance=instance, partition_key="orders")
        assert result.success
        assert refresh_with_runs(str(tmp_path / "aperio.yaml"), instance=instance).failed == []
    from aperio_assets.state import open_tracker

    assert [r["row_count"] for r in open_tracker(str(tmp_path / "aperio.yaml"), "sales").status_rows("orders")] == [2]


def test_without_any_configuration_runs_fail_naming_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aperio_assets.definitions import build_defs

    monkeypatch.delenv("APERIO_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    defs = build_defs()
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("compact_state_job").execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert f"{tmp_path / 'aperio.yaml'}: configuration file not found" in str(failure.step_failure_data.error)

"""The state assets (lineage and status partitioned by batch), their checks, the IO manager and the
refresh as Dagster runs, tested the Dagster way: ``validate_loadable``, runs executed on
``instance_for_test`` in both modes and on the loopback S3, partition status read from the
instance, and the launcher and ``dg`` in subprocesses."""

# (No ``from __future__ import annotations``: Dagster reads the test assets' annotations at runtime.)
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest

from aperio_assets import layout
from aperio_assets.catalog.connect import connect, open_catalog
from aperio_assets.catalog.views import ViewStore
from aperio_assets.definitions import build_defs
from aperio_assets.defs.assets import STATE_IO_MANAGER
from aperio_assets.defs.io_managers import SharedParquetIOManager, state_table_metadata
from aperio_assets.defs.partitions import batches_partitions
from aperio_assets.defs.resources import AperioResource
from aperio_assets.defs.sensors import CATALOG_JOB
from aperio_assets.state import open_lineage, open_tracker
from aperio_assets.state.access import open_state
from aperio_tests.helpers import (
    LakeCase,
    dagster_home,
    finish,
    partition_states,
    put,
    refresh_all,
    seed,
    start_refresh,
)

SCHEMA_ASSETS = ("conversion_lineage", "partition_status", "generated_model")


def lake_defs(config_path: str) -> tuple[dg.Definitions, AperioResource]:
    aperio = AperioResource(config_path=config_path)
    return build_defs(config_path, aperio), aperio


Results = list[dg.ExecuteInProcessResult]


def batch_runs(results: Results) -> list[dg.ExecuteInProcessResult]:
    return [r for r in results if r.job_def.name != CATALOG_JOB]


def metadata(results: Results, key: str) -> dict[str, Any]:
    """The metadata of ``key``'s materialization in these runs (a partitioned asset's run reports
    the same metadata for each of its partitions)."""
    events = [
        e
        for r in results
        for e in r.get_asset_materialization_events()
        if e.materialization.asset_key.to_user_string() == key
    ]
    assert events, f"{key} was not materialized"
    return {k: getattr(v, "value", v) for k, v in events[-1].materialization.metadata.items()}


def checks(results: Results) -> dict[str, bool]:
    return {
        f"{e.asset_key.to_user_string()}:{e.check_name}": e.passed
        for r in results
        for e in r.get_asset_check_evaluations()
    }


def catalog_run(defs: dg.Definitions, instance: dg.DagsterInstance) -> Results:
    return [defs.resolve_job_def(CATALOG_JOB).execute_in_process(instance=instance, raise_on_error=False)]


def set_mode(config_path: str, mode: str) -> None:
    path = Path(config_path)
    path.write_text(path.read_text() + f"stateStorage: {mode}\n")


def test_definitions_are_generated_from_the_config(tmp_path: Path) -> None:
    for name in ("sales", "ref"):
        (tmp_path / "lake" / name).mkdir(parents=True)
    (tmp_path / "aperio.yaml").write_text("baseDirectory: lake\n")
    defs, _ = lake_defs(str(tmp_path / "aperio.yaml"))
    with dg.instance_for_test():
        dg.Definitions.validate_loadable(defs)
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {f"{s}/{a}" for s in ("sales", "ref") for a in SCHEMA_ASSETS} | {"aperio/catalog_views"}
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey(["sales", "partition_status"])).parent_keys == {
        dg.AssetKey(["sales", "conversion_lineage"])
    }
    assert graph.get(dg.AssetKey(["aperio", "catalog_views"])).parent_keys == {
        dg.AssetKey([s, "generated_model"]) for s in ("sales", "ref")
    }
    check_keys = {f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys}
    assert check_keys == {"aperio/catalog_views:views_resolve", "aperio/catalog_views:state_health"} | {
        f"{s}/generated_model:{c}"
        for s in ("sales", "ref")
        for c in ("lineage_state_health", "status_state_health", "conversions_succeed")
    }
    # lineage and status are partitioned by the schema's batches; the model and the views are not
    for schema in ("sales", "ref"):
        for asset in ("conversion_lineage", "partition_status"):
            assert graph.get(dg.AssetKey([schema, asset])).partitions_def == batches_partitions(schema)
        assert graph.get(dg.AssetKey([schema, "generated_model"])).partitions_def is None
        job = defs.resolve_job_def(f"{schema}_batches_job")
        assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == {
            f"{schema}/conversion_lineage",
            f"{schema}/partition_status",
        }
    catalog = defs.resolve_job_def(CATALOG_JOB)
    assert {k.to_user_string() for k in catalog.asset_layer.selected_asset_keys} == {
        "sales/generated_model",
        "ref/generated_model",
        "aperio/catalog_views",
    }
    assert {s.name for s in defs.sensors} == {"legacy_state_sensor", "lake_change_sensor", "aperio_automation_sensor"}
    assert isinstance(defs.resources[STATE_IO_MANAGER], SharedParquetIOManager)


def test_without_a_config_file_the_location_loads_maintenance_only(tmp_path: Path) -> None:
    defs = build_defs(tmp_path / "missing.yaml")
    with dg.instance_for_test():
        dg.Definitions.validate_loadable(defs)
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {"aperio/catalog_views"}
    assert {j.name for j in defs.jobs} >= {CATALOG_JOB, "migrate_legacy_state_job", "compact_state_job"}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["shared", "local"])
def test_materialize_refreshes_the_lake(lake_case: LakeCase, mode: str) -> None:
    set_mode(lake_case.config_path, mode)
    lake = lake_case.lake()
    seed(lake)
    with dg.instance_for_test() as instance:
        first = refresh_all(lake_case.config_path, instance)
        assert len(batch_runs(first)) == 1  # the schema's 9 batches are one range: one run
        lineage_meta = metadata(first, "sales/conversion_lineage")
        # 9 raw files of the seed plus the fixture's orders.csv; none fails
        assert (lineage_meta["files converted"], lineage_meta["files failed"], lineage_meta["files skipped"]) == (
            10,
            0,
            0,
        )
        assert lineage_meta["rows written"] == 10 and lineage_meta["dagster/row_count"] == 10
        assert lineage_meta["state mode"] == mode
        status_meta = metadata(first, "sales/partition_status")
        # customers, regions, products, events, staff, rates, orders_csv + orders' two months
        assert (status_meta["batches processed"], status_meta["batches failed"]) == (9, 0)
        assert status_meta["rows written"] == 9 and status_meta["dagster/row_count"] == 9
        if mode == "shared":
            assert (status_meta["state files before"], status_meta["state files after"]) == (0, 1)
        assert "| orders | 2 |" in status_meta["summary"]
        model_meta = metadata(first, "sales/generated_model")
        assert model_meta["model written"] is True and model_meta["tables"] == 8
        views_meta = metadata(first, "aperio/catalog_views")
        assert views_meta["views written"] == 8 and views_meta["dagster/row_count"] == 8
        assert all(checks(first).values()) and len(checks(first)) == 5

        # the state is what the library reads, in the schema's mode
        tracker = open_tracker(lake, "sales")
        assert tracker.mode == mode
        months = {r["incremental_key_values"]: r["row_count"] for r in tracker.status_rows("orders")}
        assert months == {'{"month":"01","year":"2024"}': 2, '{"month":"02","year":"2024"}': 4}
        assert len(open_lineage(lake, "sales").records()) == 10
        with connect(lake) as con:
            assert con.execute("SELECT count(*) FROM sales.orders").fetchone()[0] == 6
        if mode == "local":
            assert Path(lake.local_state_path("sales", layout.LEGACY_PARTITION_STATUS)).exists()
            assert Path(lake.local_state_path("sales", layout.LEGACY_CONVERSIONS)).exists()
            assert not lake.storage.exists(lake.storage.aperio_path("sales", layout.PARTITION_STATUS))

        assert set(partition_states(instance, "sales").values()) == {"MATERIALIZED"}

        # nothing changed: no batch runs, nothing written
        again = refresh_all(lake_case.config_path, instance)
        assert batch_runs(again) == []
        assert metadata(again, "sales/generated_model")["model written"] is False

        # one changed partition, one removed table: one run of one batch; the model forgets the other
        put(lake, "sales/orders/year=2024/month=01/part-0.csv", b"id,amount\n1,11\n2,22\n3,33\n")
        lake.lake_storage.delete(lake.lake_storage.join(lake.config.base_directory, "sales/events.jsonl"))
        third = refresh_all(lake_case.config_path, instance)
        (run,) = batch_runs(third)
        assert run.dagster_run.tags.get("dagster/partition") == "orders/year=2024/month=01"
        lineage_meta = metadata(third, "sales/conversion_lineage")
        assert (lineage_meta["files converted"], lineage_meta["rows written"]) == (1, 1)
        status_meta = metadata(third, "sales/partition_status")
        assert (status_meta["batches processed"], status_meta["rows written"]) == (1, 1)
        model_meta = metadata(third, "sales/generated_model")
        assert (model_meta["files removed"], model_meta["batches removed"]) == (1, 1)
        assert metadata(third, "aperio/catalog_views")["views removed"] == 1
        assert "events" not in instance.get_dynamic_partitions(batches_partitions("sales").name)
    tracker = open_tracker(lake, "sales")
    assert tracker.get_processed_key_values("events") == []
    assert {r["incremental_key_values"]: r["row_count"] for r in tracker.status_rows("orders")}[
        '{"month":"01","year":"2024"}'
    ] == 3


@pytest.mark.slow
def test_a_failed_file_is_reported_and_the_checks_see_bad_state(lake_case: LakeCase) -> None:
    lake = lake_case.lake()
    put(lake, "sales/broken.xlsx", b"not a workbook")
    defs, _ = lake_defs(lake_case.config_path)
    with dg.instance_for_test() as instance:
        result = refresh_all(lake_case.config_path, instance, expect_success=False)
        lineage_meta = metadata(result, "sales/conversion_lineage")
        assert lineage_meta["files failed"] == 1 and "broken.xlsx" in lineage_meta["summary"]
        # the batch with the bad file is a failed partition; the other is materialized
        assert partition_states(instance, "sales") == {"broken": "FAILED", "orders": "MATERIALIZED"}
        # a foreign file in a state table, and a view that no longer binds
        status_dir = lake.storage.aperio_path("sales", layout.PARTITION_STATUS)
        lake.storage.write_bytes(lake.storage.join(status_dir, "00000000000000001_x_000001.parquet"), b"junk")
        ViewStore(lake).add("sales", "nowhere", "SELECT * FROM sales.no_such_table")
        checked = catalog_run(defs, instance)
    results = checks(checked)
    assert results["sales/generated_model:status_state_health"] is False
    assert results["aperio/catalog_views:views_resolve"] is False
    assert results["sales/generated_model:lineage_state_health"] is True
    (evaluation,) = [e for r in checked for e in r.get_asset_check_evaluations() if e.check_name == "views_resolve"]
    assert "sales.nowhere" in evaluation.metadata["errors"].value


@pytest.mark.parametrize("mode", ["shared", "local"])
def test_io_manager_round_trip(lake_case: LakeCase, mode: str) -> None:
    """A frame written by one asset (upserts, then an update and a delete) is what the next loads."""
    set_mode(lake_case.config_path, mode)
    aperio = AperioResource(config_path=lake_case.config_path)
    frames = [
        pl.DataFrame(
            {
                "pipeline_name": ["a", "b", "c"],
                "signature": ["s1", "s1", "s1"],
                "row_count": [1, 2, 3],
                "completed_at": [10, 10, 10],
            }
        ),
        pl.DataFrame(
            {
                "pipeline_name": ["b", "c"],
                "signature": ["s2", None],
                "row_count": [20, None],
                "completed_at": [11, None],
                "_deleted": [False, True],
            }
        ),
    ]
    loaded: list[pl.DataFrame] = []

    @dg.asset(
        key=["sales", "completions"], io_manager_key="state", metadata=state_table_metadata("sales", "table_completion")
    )
    def completions(context: dg.AssetExecutionContext) -> pl.DataFrame:
        return frames[int(context.run.tags["round"])]

    @dg.asset(ins={"current": dg.AssetIn(["sales", "completions"])})
    def reader(current: pl.DataFrame) -> None:
        loaded.append(current)

    resources = {"state": SharedParquetIOManager(aperio=aperio)}
    with dg.instance_for_test() as instance:
        for round_ in ("0", "1"):
            assert dg.materialize(
                [completions, reader], instance=instance, resources=resources, tags={"round": round_}
            ).success
    first, second = (frame.sort("pipeline_name") for frame in loaded)
    assert first.select("pipeline_name", "signature", "row_count").rows() == [
        ("a", "s1", 1),
        ("b", "s1", 2),
        ("c", "s1", 3),
    ]
    assert second.select("pipeline_name", "signature", "row_count", "completed_at").rows() == [
        ("a", "s1", 1, 10),
        ("b", "s2", 20, 11),
    ]
    assert second.schema["row_count"] == pl.Int64 and "_deleted" not in second.columns
    tracker = open_tracker(aperio.lake(), "sales")
    assert tracker.is_table_complete("b", "s2") and not tracker.is_table_complete("c", "s1")
    if mode == "shared":  # each round is one immutable state file
        assert open_state(aperio.lake(), "sales", "table_completion").file_count() == 2


def test_io_manager_rejects_unknown_columns(tmp_path: Path) -> None:
    (tmp_path / "lake" / "sales").mkdir(parents=True)
    (tmp_path / "aperio.yaml").write_text("baseDirectory: lake\n")
    aperio = AperioResource(config_path=str(tmp_path / "aperio.yaml"))

    @dg.asset(key=["sales", "bad"], io_manager_key="state", metadata=state_table_metadata("sales", "table_completion"))
    def bad() -> pl.DataFrame:
        return pl.DataFrame({"pipeline_name": ["a"], "colour": ["red"]})

    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [bad], instance=instance, resources={"state": SharedParquetIOManager(aperio=aperio)}, raise_on_error=False
        )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "no column(s) colour" in str(failure.step_failure_data.error)


def test_the_launcher_refreshes_as_runs_in_a_fresh_home(tmp_path: Path) -> None:
    """`python -m aperio_assets.defs.launch` (what `make run` runs) in a fresh DAGSTER_HOME."""
    (tmp_path / "lake" / "sales").mkdir(parents=True)
    (tmp_path / "lake" / "sales" / "orders.csv").write_text("id,amount\n1,10\n2,20\n")
    (tmp_path / "lake" / "sales" / "regions.json").write_text('[{"code": "N"}]')
    (tmp_path / "aperio.yaml").write_text("baseDirectory: lake\n")
    home = dagster_home(tmp_path, "dagster_home")
    # a real process: the launcher's module entry point on a DAGSTER_HOME no other process has touched
    done = start_refresh(home, tmp_path / "aperio.yaml")
    output = finish(done)
    # its console log at INFO, as make run's `dagster job execute -c run-config.yaml`: no event lines
    assert "aperio: 1 batch run(s) (2 batch(es) registered, 0 removed)" in output
    assert " - DEBUG - " not in output and "RUN_SUCCESS" not in output
    tracker = open_tracker(str(tmp_path / "aperio.yaml"), "sales")
    assert {r["alternate_name"]: r["row_count"] for r in tracker.status_rows("orders")} == {"orders": 2}
    with connect(str(tmp_path / "aperio.yaml")) as con:
        assert con.execute("SELECT sum(amount) FROM sales.orders").fetchone()[0] == 30
    assert any(home.joinpath("storage").iterdir())  # the run was recorded in this instance
    # nothing left to convert: the catalog run alone, its events printed at DEBUG
    again = finish(start_refresh(home, tmp_path / "aperio.yaml", "--log-level", "debug"))
    assert "aperio: 0 batch run(s) (0 batch(es) registered, 0 removed)" in again
    assert "aperio_catalog_job - " in again and "RUN_SUCCESS" in again and "sales_batches_job" not in again


def test_views_resolve_checks_the_files_as_they_are_now(lake_case: LakeCase) -> None:
    """The catalog caches bound views; the check must still see a view whose files were damaged."""
    lake = lake_case.lake()
    seed(lake)
    defs, _ = lake_defs(lake_case.config_path)
    with dg.instance_for_test() as instance:
        first = refresh_all(lake_case.config_path, instance)
        assert checks(first)["aperio/catalog_views:views_resolve"] is True
        (built,) = [e for r in first for e in r.get_asset_check_evaluations() if e.check_name == "views_resolve"]
        # views its own connect bound into a new build are not resolved a second time
        bound_now, views = (built.metadata[k].value for k in ("views bound by this check", "views"))
        assert (0 < bound_now <= views) if built.metadata["catalog cache"].value == "built" else bound_now == 0
        connect(lake).close()  # the cache is built and will be hit
        tables = lake.storage.aperio_path("sales", layout.TABLES_DIR)
        for info in lake.storage.list(lake.storage.join(tables, "customers"), recursive=True):
            lake.storage.write_bytes(info.path, b"not parquet")  # (a deleted one would be converted again)
        again = catalog_run(defs, instance)
    (evaluation,) = [e for r in again for e in r.get_asset_check_evaluations() if e.check_name == "views_resolve"]
    assert evaluation.passed is False
    assert list(evaluation.metadata["errors"].value) == ["sales.customers"]
    assert evaluation.metadata["views bound by this check"].value == 0  # a cache hit: all resolved now


def test_views_resolve_tries_cached_failures_again(lake_case: LakeCase) -> None:
    """A view that did not bind when the catalog cache was built is remembered as broken by the
    cache; once it binds (its files are back) the catalog binds its views again and the check passes."""
    import shutil

    from aperio_assets.catalog.cache import cache_directory

    lake = lake_case.lake()
    seed(lake)
    defs, _ = lake_defs(lake_case.config_path)
    folder = lake.storage.join(lake.storage.aperio_path("sales", layout.TABLES_DIR), "customers")
    with dg.instance_for_test() as instance:
        refresh_all(lake_case.config_path, instance)
        saved = {info.path: lake.storage.read_bytes(info.path) for info in lake.storage.list(folder, recursive=True)}
        for path in saved:
            lake.storage.delete(path)
        # no catalog cache on this machine: every view is bound again (a change of the definitions
        # would bind only the views that changed, and the customers view has not changed)
        shutil.rmtree(cache_directory())
        _, report = open_catalog(lake)
        assert report.cache == "built" and "No files found" in report.broken["sales.customers"]
        for path, data in saved.items():
            lake.storage.write_bytes(path, data)
        again = catalog_run(defs, instance)
    (evaluation,) = [e for r in again for e in r.get_asset_check_evaluations() if e.check_name == "views_resolve"]
    # the files are back: the cached failure binds, so the catalog was bound again and the view is there
    assert evaluation.passed is True and evaluation.metadata["errors"].value == {}
    assert evaluation.metadata["catalog cache"].value == "rebuilt"


@pytest.mark.slow
def test_a_failed_file_is_reported_on_every_run_and_retried_alone(lake_case: LakeCase) -> None:
    """An unchanged bad file is tried again, and shown failed, on every full refresh (its partition
    failed, a warning check) until it converts; fixed, its batch is run alone."""
    lake = lake_case.lake()
    put(lake, "sales/broken.json", b"{not json")
    with dg.instance_for_test() as instance:
        for attempt in range(2):
            result = refresh_all(lake_case.config_path, instance, expect_success=False)
            lineage_meta = metadata(result, "sales/conversion_lineage")
            assert lineage_meta["files failed"] == 1 and "broken.json" in lineage_meta["summary"]
            assert partition_states(instance, "sales") == {"broken": "FAILED", "orders": "MATERIALIZED"}
            if attempt == 1:  # only the failed batch is run again
                (run,) = batch_runs(result)
                assert run.dagster_run.tags.get("dagster/partition") == "broken"
            (check,) = [
                e for r in result for e in r.get_asset_check_evaluations() if e.check_name == "conversions_succeed"
            ]
            assert check.passed is False and check.severity == dg.AssetCheckSeverity.WARN
            (failure,) = check.metadata["failures"].value
            assert failure["file"].endswith("sales/broken.json") and failure["table"] == "broken"
        put(lake, "sales/broken.json", b'[{"a": 1}]')
        fixed = refresh_all(lake_case.config_path, instance)
        assert partition_states(instance, "sales") == {"broken": "MATERIALIZED", "orders": "MATERIALIZED"}
    (run,) = batch_runs(fixed)
    assert run.dagster_run.tags.get("dagster/partition") == "broken"
    lineage_meta = metadata(fixed, "sales/conversion_lineage")
    assert (lineage_meta["files converted"], lineage_meta["files failed"]) == (1, 0)
    assert checks(fixed)["sales/generated_model:conversions_succeed"] is True
    assert metadata(fixed, "sales/partition_status")["batches processed"] == 1


def test_lineage_is_recorded_as_the_step_converts(lake_case: LakeCase, monkeypatch: pytest.MonkeyPatch) -> None:
    """A conversion step that dies midway keeps the lineage of the groups it finished; the next run
    converts only the rest, and the IO manager writes no row twice."""
    from aperio_assets.conversion import refresh as refresh_module

    config = Path(lake_case.config_path)
    config.write_text(config.read_text().replace("max_small_files: 3", "max_small_files: 100"))  # count files
    lake = lake_case.lake()
    for i in range(6):
        put(lake, f"sales/t{i}.csv", f"a\n{i}\n".encode())  # with the fixture's orders.csv: 7 files
    monkeypatch.setattr(refresh_module, "FLUSH_EVERY_FILES", 2)
    original = refresh_module.SchemaRefresh._convert
    calls = []

    def dies_on_the_fifth(self, table, raw, workdir):
        calls.append(raw.path)
        if len(calls) == 5:
            raise RuntimeError("worker lost")
        return original(self, table, raw, workdir)

    monkeypatch.setattr(refresh_module.SchemaRefresh, "_convert", dies_on_the_fifth)
    defs, _ = lake_defs(lake_case.config_path)
    job = defs.resolve_job_def("sales_batches_job")
    keys = ["orders", *(f"t{i}" for i in range(6))]
    tags = {"dagster/asset_partition_range_start": "orders", "dagster/asset_partition_range_end": "t5"}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(batches_partitions("sales").name, keys)
        failed = job.execute_in_process(
            instance=instance,
            tags=tags,
            raise_on_error=False,
            asset_selection=[dg.AssetKey(["sales", "conversion_lineage"])],
        )
        assert not failed.success
        recorded = open_lineage(lake, "sales").records()
        assert sorted(recorded) == sorted(calls[:4])  # two groups of two, recorded before the failure
        monkeypatch.setattr(refresh_module.SchemaRefresh, "_convert", original)
        result = job.execute_in_process(
            instance=instance, tags=tags, asset_selection=[dg.AssetKey(["sales", "conversion_lineage"])]
        )
    lineage_meta = metadata([result], "sales/conversion_lineage")
    assert (lineage_meta["files converted"], lineage_meta["files skipped"]) == (3, 4)
    assert lineage_meta["rows written"] == 3 and lineage_meta["dagster/row_count"] == 7
    # (shared mode) the first run wrote two groups; this one two more (2 + 1), the IO manager none
    assert (lineage_meta["state files before"], lineage_meta["state files after"]) == (2, 4)


def test_aperio_refresh_job_refreshes_everything_in_one_run(lake_case: LakeCase) -> None:
    """One run, the library refresh (two worker processes): every batch registered as a partition and
    reported materialized, the model and views reported; a failed batch fails the run after the rest."""
    lake = lake_case.lake()
    seed(lake)
    put(lake, "sales/broken.json", b"{not json")
    defs, _ = lake_defs(lake_case.config_path)
    job = defs.resolve_job_def("aperio_refresh_job")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            instance=instance, raise_on_error=False, run_config={"ops": {"refresh_lake": {"config": {"workers": 2}}}}
        )
        assert not result.success
        (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert "1 batch(es) failed" in str(failure.step_failure_data.user_failure_data.description)
        keys = instance.get_dynamic_partitions(batches_partitions("sales").name)
        assert "broken" in keys and "orders/year=2024/month=01" in keys and len(keys) == 10
        materialized = {
            (e.materialization.asset_key.to_user_string(), e.materialization.partition)
            for e in result.all_events
            if e.event_type_value == "ASSET_MATERIALIZATION"
        }
        assert {p for a, p in materialized if a == "sales/partition_status"} == set(keys) - {"broken"}
        assert ("sales/generated_model", None) in materialized and ("aperio/catalog_views", None) in materialized
        put(lake, "sales/broken.json", b'[{"a": 1}]')
        again = job.execute_in_process(instance=instance)
        assert {
            e.materialization.partition
            for e in again.all_events
            if e.event_type_value == "ASSET_MATERIALIZATION"
            and e.materialization.asset_key.to_user_string() == "sales/partition_status"
        } == {"broken"}
    assert len(open_lineage(lake, "sales").records()) == 11
    with connect(lake) as con:
        assert con.execute("SELECT count(*) FROM sales.orders").fetchone()[0] == 6

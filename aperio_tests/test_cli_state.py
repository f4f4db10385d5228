"""`aperio status`, `compact` and `doctor` on shared state, local disk and S3."""

from __future__ import annotations

import json

from aperio_assets.state import open_tracker
from aperio_tests.helpers import LakeCase, run_cli


def cli_json(case: LakeCase, *args: str) -> tuple[int, object]:
    result = run_cli("--config", case.config_path, *args, "--json")
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode in (0, 1), result.stderr  # a result, or problems found: never a usage error
    return result.returncode, json.loads(result.stdout)


def test_status_compact_doctor_repair(lake_case: LakeCase) -> None:
    tracker = open_tracker(lake_case.config_path, "sales")
    for month in range(1, 4):
        tracker.mark_processed("orders", "orders", {"month": f"{month:02d}"}, row_count=month)
    tracker.mark_table_complete("orders-pipeline", "sig")
    lake = lake_case.lake()
    storage = lake.storage
    bad = storage.join(storage.aperio_path("sales", "partition_status"), "00000000000000001_bad_000000.parquet")
    storage.write_bytes(bad, b"PAR1 this is not parquet")

    code, report = cli_json(lake_case, "status")
    assert code == 0
    (sales,) = report["schemas"]
    ps = sales["stateTables"]["partition_status"]
    assert (ps["liveRows"], ps["files"], ps["smallFiles"], ps["smallFileLimit"]) == (3, 3, 3, 3)
    assert ps["unreadableFiles"] == ["00000000000000001_bad_000000.parquet"]
    assert sales["stateTables"]["table_completion"]["liveRows"] == 1

    code, found = cli_json(lake_case, "doctor")
    assert code == 1 and not found["ok"]
    (problem,) = found["problems"]
    assert (problem["kind"], problem["path"], problem["repaired"]) == ("unreadable-file", bad, False)
    assert "not a valid Parquet file" in problem["detail"]
    assert storage.exists(bad)  # without --repair nothing moves

    code, repaired = cli_json(lake_case, "doctor", "--repair")
    assert code == 0 and repaired["ok"] and repaired["problems"][0]["repaired"]
    quarantined = storage.aperio_path(None, "_quarantine/sales/partition_status/00000000000000001_bad_000000.parquet")
    assert not storage.exists(bad) and storage.read_bytes(quarantined) == b"PAR1 this is not parquet"
    assert cli_json(lake_case, "doctor")[0] == 0

    code, results = cli_json(lake_case, "compact", "--schema", "sales")
    assert code == 0
    by_table = {r["table"]: r for r in results}
    assert (by_table["partition_status"]["files_read"], by_table["partition_status"]["rows_written"]) == (3, 3)
    code, report = cli_json(lake_case, "status")
    ps = report["schemas"][0]["stateTables"]["partition_status"]
    assert (ps["liveRows"], ps["files"], ps["smallFiles"], ps["unreadableFiles"]) == (3, 1, 0, [])
    assert open_tracker(lake_case.config_path, "sales").get_processed_key_values("orders") == [
        {"month": "01"},
        {"month": "02"},
        {"month": "03"},
    ]


def test_doctor_compacts_crowded_tables(lake_case: LakeCase) -> None:
    tracker = open_tracker(lake_case.config_path, "sales")
    # write from several instances so no single writer's opportunistic compaction kicks in
    for i in range(5):
        open_tracker(lake_case.config_path, "sales").mark_processed("t", "t", {"i": str(i)})
    code, found = cli_json(lake_case, "doctor")
    assert code == 1 and [p["kind"] for p in found["problems"]] == ["too-many-small-files"]
    code, repaired = cli_json(lake_case, "doctor", "--repair")
    assert code == 0 and repaired["problems"][0]["repair"] == "compacted 5 files into one"
    assert len(tracker.get_processed_key_values("t")) == 5


def test_unknown_schema_is_a_usage_error(lake_case: LakeCase) -> None:
    result = run_cli("--config", lake_case.config_path, "compact", "--schema", "nope")
    assert result.returncode == 2
    assert result.stderr.strip() == f"aperio: error: unknown schema 'nope' in {lake_case.config_path} (known: sales)"


def test_local_mode_status_reads_the_duckdb_file(tmp_path) -> None:
    (tmp_path / "lake" / "sales").mkdir(parents=True)
    config = tmp_path / "aperio.yaml"
    config.write_text("baseDirectory: lake\nstateStorage: local\n")
    tracker = open_tracker(str(config), "sales")
    tracker.mark_processed("orders", "orders", {"m": "1"})
    tracker.mark_table_complete("p", "s")
    result = run_cli("--config", str(config), "status", "--json")
    sales = json.loads(result.stdout)["schemas"][0]
    assert sales["legacyFiles"] == [".partition_status.duckdb"]
    assert sales["stateTables"]["partition_status"]["liveRows"] == 1
    assert sales["stateTables"]["table_completion"]["liveRows"] == 1

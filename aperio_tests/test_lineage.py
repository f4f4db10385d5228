"""Conversion lineage: the legacy `.conversions.json` (all three shapes, its lock file) and the
shared `conversions` state table behind one interface."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aperio_assets.conversion.refresh import refresh
from aperio_assets.errors import StorageError
from aperio_assets.lake import open_lake
from aperio_assets.state import JsonLineage, open_lineage, open_tracker
from aperio_assets.state.lineage import parse_legacy_conversions
from aperio_tests.helpers import run_in_processes

RECORD = {
    "tableName": "planes",
    "tableType": "file",
    "sourceFile": "/lake/flights/planes.csv",
    "sourceType": "csv",
    "originalFile": "/lake/flights/planes.csv",
    "convertedFile": "/x/planes.parquet",
    "conversionType": "csv",
    "parquetCacheFile": ["/c/1.parquet", "/c/2.parquet"],
    "viewScanPattern": "*",
    "refreshEnabled": True,
    "refreshInterval": None,
    "timestamp": 1704067300000,
    "etag": "abc",
    "contentLength": 1234,
    "contentType": "text/csv",
    "tableConfig": {"delimiter": ","},
    "rowCount": 42,
    "snapshotId": None,
    "baseline": False,
    "lastChangeCheck": 1704067200000,
    "viewNeedsRefresh": False,
    "legacyNote": "kept",
}


def test_all_three_legacy_shapes() -> None:
    first = parse_legacy_conversions(
        {
            "conversions": {
                "/a.xlsx": {"targetPath": "/a.json", "sourceModified": 1704067200000, "convertedAt": 1704067300000}
            }
        }
    )
    assert first["/a.xlsx"]["target_path"] == "/a.json"
    assert (first["/a.xlsx"]["source_modified"], first["/a.xlsx"]["converted_at"]) == (1704067200000, 1704067300000)

    record_map = parse_legacy_conversions({"key-1": RECORD})
    row = record_map["/lake/flights/planes.csv"]
    assert (row["target_path"], row["row_count"], row["source_size"], row["source_etag"], row["table_name"]) == (
        "/x/planes.parquet",
        42,
        1234,
        "abc",
        "planes",
    )
    extra = json.loads(row["extra"])
    assert extra["legacyNote"] == "kept" and extra["parquetCacheFile"] == ["/c/1.parquet", "/c/2.parquet"]
    assert extra["tableConfig"] == {"delimiter": ","} and extra["lastChangeCheck"] == 1704067200000

    namespaced = parse_legacy_conversions({"s3://bucket": {"k": {**RECORD, "sourceFile": "s3://bucket/p.csv"}}})
    assert list(namespaced) == ["s3://bucket/p.csv"]
    with pytest.raises(ValueError, match="neither a conversion record nor a namespace"):
        parse_legacy_conversions({"x": 1})


def test_json_lineage_round_trip_keeps_unknown_fields(tmp_path: Path) -> None:
    path = tmp_path / ".conversions.json"
    path.write_text(json.dumps({"key-1": RECORD}))
    lineage = JsonLineage(path)
    lineage.record_many(
        [
            {
                "source_path": "/lake/new.csv",
                "target_path": "/t/new.parquet",
                "row_count": 3,
                "source_size": 10,
                "source_modified": 5,
                "converted_at": 6,
                "table_name": "new",
                "conversion_type": "csv->parquet",
            }
        ]
    )
    assert (tmp_path / ".conversions.json.lock").exists()
    document = json.loads(path.read_text())
    assert sorted(document) == ["/lake/flights/planes.csv", "/lake/new.csv"]  # record-map shape
    old = document["/lake/flights/planes.csv"]
    assert old["legacyNote"] == "kept" and old["parquetCacheFile"] == ["/c/1.parquet", "/c/2.parquet"]
    assert old["rowCount"] == 42 and old["convertedFile"] == "/x/planes.parquet"
    assert JsonLineage(path).get("/lake/new.csv")["row_count"] == 3
    lineage.remove(["/lake/flights/planes.csv"])
    assert list(JsonLineage(path).records()) == ["/lake/new.csv"]


def test_corrupt_json_is_an_error_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / ".conversions.json"
    path.write_text("{not json")
    with pytest.raises(StorageError, match="not a valid conversions file"):
        JsonLineage(path).records()
    with pytest.raises(StorageError):
        JsonLineage(path).record_many([{"source_path": "/x"}])
    assert path.read_text() == "{not json"


def _record_in_process(path: str, me: int) -> None:
    lineage = JsonLineage(path)
    for i in range(40):
        lineage.record_many([{"source_path": f"/w{me}/{i}.csv", "row_count": i}])


@pytest.mark.slow
def test_the_lock_serialises_writers_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / ".conversions.json")
    run_in_processes(_record_in_process, [(path, n) for n in range(3)], timeout=120)
    assert len(JsonLineage(path).records()) == 120  # no lost update


def test_local_mode_refresh_uses_the_legacy_files(tmp_path: Path) -> None:
    (tmp_path / "lake" / "sales").mkdir(parents=True)
    (tmp_path / "lake" / "sales" / "orders.csv").write_text("id\n1\n2\n")
    config = tmp_path / "aperio.yaml"
    config.write_text("baseDirectory: lake\nstateStorage: local\n")
    lake = open_lake(str(config))
    (result,) = refresh(lake)
    assert result.count("files", "converted") == 1
    aperio = tmp_path / "lake" / ".aperio" / "sales"
    assert (aperio / ".conversions.json").exists() and (aperio / ".conversions.json.lock").exists()
    assert (aperio / ".partition_status.duckdb").exists()
    assert not (aperio / "conversions").exists() and not (aperio / "partition_status").exists()
    assert isinstance(open_lineage(lake, "sales"), JsonLineage)
    assert open_tracker(lake, "sales").status_rows("orders")[0]["row_count"] == 2
    (again,) = refresh(lake)
    assert again.count("files", "converted") == 0

"""Migration of legacy single-node state (DESIGN §8): lossless, verified, idempotent, crash-safe."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from aperio_assets.catalog import ViewStore, open_catalog
from aperio_assets.conversion.refresh import refresh
from aperio_assets.demo import write_demo_lake
from aperio_assets.lake import open_lake
from aperio_assets.migration import MIGRATION_WRITER, migrate
from aperio_assets.processes import worker_process
from aperio_assets.state import open_lineage, open_tracker
from aperio_assets.state.keys import canonical_key
from aperio_tests.helpers import S3Server, process_context, run_cli, run_in_processes


@pytest.fixture
def legacy_lake(tmp_path: Path) -> Path:
    """The demo lake with legacy state (every shape DESIGN §4 lists); returns its aperio.yaml."""
    return write_demo_lake(tmp_path / "demo", with_legacy=True, flights_per_month=20)


def legacy_rows(path: Path) -> tuple[list[tuple], list[tuple]]:
    con = duckdb.connect(str(path), read_only=True)
    have = {r[0] for r in con.execute("DESCRIBE partition_status").fetchall()}
    late = ", ".join(c if c in have else "NULL" for c in ("row_count", "error_status", "error_message", "phase"))
    status = con.execute(
        "SELECT alternate_name, incremental_key_values, source_table, target_pattern, processed_at, "
        f"{late} FROM partition_status"
    ).fetchall()
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    completion = con.execute("SELECT * FROM table_completion").fetchall() if "table_completion" in tables else []
    con.close()
    return status, completion


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_lossless_round_trip(legacy_lake: Path) -> None:
    aperio = legacy_lake.parent / "lake" / ".aperio"
    expected_status: dict[tuple[str, str], dict] = {}
    for schema in ("flights", "reference"):
        status, _ = legacy_rows(aperio / schema / ".partition_status.duckdb")
        for alt, key, source, target, processed_at, rows, error, message, phase in status:
            canonical = canonical_key(key)
            current = expected_status.get((schema, alt, canonical))
            if current is None or current["processed_at"] < processed_at:  # key-order duplicates: latest wins
                expected_status[(schema, alt, canonical)] = {
                    "source_table": source,
                    "target_pattern": target,
                    "processed_at": processed_at,
                    "row_count": rows,
                    "error_status": bool(error),
                    "error_message": message,
                    "phase": phase,
                }
    _, completion = legacy_rows(aperio / "flights" / ".partition_status.duckdb")
    lake = open_lake(str(legacy_lake))

    report = migrate(lake)
    assert not report.failed, report.to_dict()

    got = {}
    for schema in ("flights", "reference"):
        table = open_tracker(lake, schema).status  # the shared state table itself
        for row in table.to_arrow().to_pylist():
            got[(schema, row["alternate_name"], row["incremental_key_values"])] = row
    assert set(got) == set(expected_status)
    for key, want in expected_status.items():
        row = got[key]
        assert {c: row[c] for c in want} == want, key
        assert (row["_ts"], row["_writer"]) == (want["processed_at"] * 1000, MIGRATION_WRITER)
    assert any(r["error_status"] for r in got.values())  # the error row came through
    tracker = open_tracker(lake, "flights")
    assert sorted((c[0], c[1], c[5]) for c in completion) == sorted(
        (r["pipeline_name"], r["signature"], r["completed_at"]) for r in tracker.completion.rows()
    )

    lineage = open_lineage(lake, "flights").records()
    planes = next(r for p, r in lineage.items() if p.endswith("planes.csv"))
    assert json.loads(planes["extra"])["legacyNote"]  # unknown legacy fields are kept
    reference = open_lineage(lake, "reference").records()
    assert [r["target_path"].rsplit("/", 1)[-1] for r in reference.values()] == ["airlines.json"]

    views = {(v.schema_name, v.view_name): v for v in ViewStore(lake).list()}
    assert views[("flights", "delays_by_carrier")].origin == "migrated"
    assert "JOIN" in views[("flights", "delays_by_carrier")].sql.upper()

    records = sorted(p.name for p in (aperio / "_migrations").iterdir())
    assert records == [
        "catalog-views.json",
        "flights-conversions.json",
        "flights-partition_status.json",
        "flights-table_completion.json",
        "reference-conversions.json",
        "reference-partition_status.json",
        "reference-table_completion.json",
    ]
    record = json.loads((aperio / "_migrations" / "flights-partition_status.json").read_text())
    assert record["rows"] == len([k for k in expected_status if k[0] == "flights"]) and len(record["checksum"]) == 64
    # originals moved out of the way, copies in the archive
    assert not (aperio / "flights" / ".partition_status.duckdb").exists()
    assert not (aperio / "flights" / ".conversions.json.lock").exists()
    assert not (aperio / ".duckdb" / "shared.duckdb").exists()
    (stamp,) = (aperio / "_archive").iterdir()
    assert (stamp / "flights" / ".partition_status.duckdb").exists() and (stamp / "catalog" / "shared.duckdb").exists()

    # and the lake works on: refresh builds the tables, the migrated user view queries
    refresh(lake)
    con, catalog = open_catalog(lake)
    assert catalog.broken == {}
    assert con.execute("SELECT count(*) FROM flights.delays_by_carrier").fetchone()[0] > 0


def test_rerun_is_a_no_op_and_dry_run_writes_nothing(legacy_lake: Path) -> None:
    root = legacy_lake.parent
    lake = open_lake(str(legacy_lake))
    before = all_files(root)
    dry = migrate(lake, dry_run=True)
    assert all(k.status == "would-migrate" for s in dry.schemas for k in s.kinds)
    assert all_files(root) == before

    first = migrate(lake, archive=False)
    assert all(k.status == "migrated" for s in first.schemas for k in s.kinds)
    assert (root / "lake" / ".aperio" / "flights" / ".partition_status.duckdb").exists()  # --no-archive
    state = sorted(p.name for p in (root / "lake" / ".aperio" / "flights" / "partition_status").iterdir())
    second = migrate(lake, archive=False)
    assert all(k.status == "already-migrated" for s in second.schemas for k in s.kinds)
    assert sorted(p.name for p in (root / "lake" / ".aperio" / "flights" / "partition_status").iterdir()) == state
    assert migrate(lake).schemas and not migrate(lake).schemas  # archiving the rest; then nothing is left


def test_corrupt_legacy_file_stops_only_its_schema(legacy_lake: Path) -> None:
    bad = legacy_lake.parent / "lake" / ".aperio" / "reference" / ".partition_status.duckdb"
    bad.write_bytes(b"not a duckdb file" * 64)
    result = run_cli("--config", str(legacy_lake), "migrate")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "aperio: failed: reference:" in result.stderr and ".partition_status.duckdb" in result.stderr
    assert bad.read_bytes() == b"not a duckdb file" * 64  # left in place
    lake = open_lake(str(legacy_lake))
    assert len(open_tracker(lake, "flights").get_processed_key_values("flights")) == 6
    assert open_tracker(lake, "reference").get_processed_key_values("airlines") == []


def test_shared_writes_stay_newer_and_local_schemas_are_untouched(tmp_path: Path) -> None:
    config = write_demo_lake(tmp_path / "demo", with_legacy=True, flights_per_month=20)
    text = config.read_text() + "schemas:\n  - name: flights\n  - name: reference\n    stateStorage: local\n"
    config.write_text(text)
    lake = open_lake(str(config))
    open_tracker(lake, "flights").mark_processed("flights", "flights", {"year": "2013", "month": "01"}, row_count=999)
    report = migrate(lake)
    assert [s.schema for s in report.schemas] == ["flights", "catalog"]
    (row,) = [
        r
        for r in open_tracker(lake, "flights").status_rows("flights")
        if r["incremental_key_values"] == '{"month":"01","year":"2013"}'
    ]
    assert row["row_count"] == 999  # written in shared mode after the legacy row: it stays the winner
    assert (tmp_path / "demo" / "lake" / ".aperio" / "reference" / ".partition_status.duckdb").exists()


def test_legacy_on_local_disk_into_s3(tmp_path: Path, s3: S3Server, s3_bucket: str) -> None:
    demo = write_demo_lake(tmp_path / "demo", with_legacy=True, flights_per_month=20)
    legacy = tmp_path / "demo" / "lake" / ".aperio"
    from aperio_assets.storage import S3Storage

    storage = S3Storage(s3.settings())
    for path in (tmp_path / "demo" / "lake").rglob("*"):
        if path.is_file() and ".aperio" not in path.parts:
            storage.write_bytes(f"s3://{s3_bucket}/{path.relative_to(tmp_path / 'demo')}", path.read_bytes())
    config = tmp_path / "s3.yaml"
    config.write_text(
        f"baseDirectory: s3://{s3_bucket}/lake\nlegacyDirectory: {legacy}\n"
        f"storage:\n  s3:\n    endpoint_url: {s3.endpoint_url}\n"
    )
    assert demo.exists()
    lake = open_lake(str(config))
    report = migrate(lake)
    assert not report.failed, report.to_dict()
    assert len(open_tracker(lake, "flights").get_processed_key_values("flights")) == 6
    assert not (legacy / "flights" / ".partition_status.duckdb").exists()
    archived = [f.path for f in lake.storage.list(lake.storage.aperio_path(None, "_archive"), recursive=True)]
    assert any(p.endswith("flights/.partition_status.duckdb") for p in archived)
    assert lake.storage.exists(lake.storage.aperio_path(None, "_migrations/flights-partition_status.json"))


# -- killed part-way, and two at once ----------------------------------------------------------------


def _state(config: Path) -> dict:
    """Everything migration decides, independent of file names and of which run wrote it."""
    lake = open_lake(str(config))
    state = {}
    for schema in ("flights", "reference"):
        tracker = open_tracker(lake, schema)
        for table in (tracker.status, tracker.completion):
            rows = table.to_arrow().to_pylist()
            state[(schema, table.spec.name)] = sorted(json.dumps(r, sort_keys=True, default=str) for r in rows)
        state[(schema, "conversions")] = sorted(
            json.dumps(r, sort_keys=True) for r in open_lineage(lake, schema).records().values()
        )
    state["views"] = sorted((v.schema_name, v.view_name, v.origin, v.sql) for v in ViewStore(lake).list())
    aperio = config.parent / "lake" / ".aperio"
    state["legacy left"] = sorted(
        str(p.relative_to(aperio)) for p in aperio.rglob(".*") if p.is_file() and "_archive" not in p.parts
    )
    # the two lakes compared live in different folders
    return json.loads(json.dumps({str(k): v for k, v in state.items()}).replace(str(config.parent), "<root>"))


def _migrate_and_die(config: str, method: str, calls: int) -> None:
    """Run a migration that SIGKILLs itself after the ``calls``-th call of ``Migrator.<method>``."""
    import os
    import signal

    from aperio_assets.migration import migrate as run
    from aperio_assets.migration.migrate import Migrator

    original = getattr(Migrator, method)
    count = [0]

    def dying(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        count[0] += 1
        if count[0] == calls:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(Migrator, method, dying)
    run(open_lake(config))


def _migrate(config: str) -> None:
    from aperio_assets.migration import migrate as run

    report = run(open_lake(config))
    assert not report.failed, report.to_dict()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "calls"),
    [
        ("_backup", 2),
        ("_migrate_kind", 1),
        ("_migrate_kind", 4),
        ("_record", 2),
        ("_remove_original", 1),
        ("migrate_catalog", 1),
    ],
)
def test_killed_anywhere_then_rerun_ends_correct(tmp_path: Path, method: str, calls: int) -> None:
    import signal

    reference = write_demo_lake(tmp_path / "reference", with_legacy=True, flights_per_month=20)
    migrate(open_lake(str(reference)))
    config = write_demo_lake(tmp_path / "killed", with_legacy=True, flights_per_month=20)
    process = worker_process(process_context(), _migrate_and_die, (str(config), method, calls))
    process.start()
    process.join(timeout=120)
    assert process.exitcode == -signal.SIGKILL  # it really died part-way
    report = migrate(open_lake(str(config)))
    assert not report.failed, report.to_dict()
    assert _state(config) == _state(reference)


@pytest.mark.slow
def test_two_migrators_at_once_end_as_one(tmp_path: Path) -> None:
    reference = write_demo_lake(tmp_path / "reference", with_legacy=True, flights_per_month=20)
    migrate(open_lake(str(reference)))
    config = write_demo_lake(tmp_path / "twice", with_legacy=True, flights_per_month=20)
    run_in_processes(_migrate, [(str(config),)] * 2, timeout=120)
    assert _state(config) == _state(reference)


def test_unicode_quotes_empty_keys_and_namespaced_conversions(tmp_path: Path) -> None:
    from aperio_assets.migration import legacy_fingerprint
    from aperio_assets.state.legacy_schema import PARTITION_STATUS_DDL, TABLE_COMPLETION_DDL

    (tmp_path / "lake" / "sales").mkdir(parents=True)
    aperio = tmp_path / "lake" / ".aperio" / "sales"
    aperio.mkdir(parents=True)
    con = duckdb.connect(str(aperio / ".partition_status.duckdb"))
    con.execute(PARTITION_STATUS_DDL)
    con.execute(TABLE_COMPLETION_DDL)
    odd = '{"ville": "Zürich", "q": "it\'s \\"quoted\\"; DROP TABLE x; --"}'
    con.executemany(
        "INSERT INTO partition_status VALUES (?, ?, ?, NULL, ?, ?, ?, ?, NULL)",
        [
            ("orders", odd, "orders", 1000, 5, False, None),
            ("orders", "{}", "orders", 2000, None, True, "boom"),
        ],
    )
    con.close()
    (aperio / ".conversions.json").write_text(
        json.dumps(
            {
                "s3://bucket": {
                    "k1": {
                        "sourceFile": "s3://bucket/sales/a.csv",
                        "convertedFile": "s3://bucket/t/a.parquet",
                        "rowCount": 3,
                        "timestamp": 1704067300000,
                        "refreshEnabled": True,
                    }
                }
            }
        )
    )
    (aperio / ".conversions.json.lock").write_text("")
    config = tmp_path / "aperio.yaml"
    config.write_text("baseDirectory: lake\n")
    lake = open_lake(str(config))
    fingerprint = legacy_fingerprint(lake)
    assert fingerprint is not None and fingerprint == legacy_fingerprint(lake)

    assert not migrate(lake).failed
    tracker = open_tracker(lake, "sales")
    rows = {r["incremental_key_values"]: r for r in tracker.status_rows("orders")}
    assert set(rows) == {canonical_key(odd), "{}"}
    assert "Zürich" in canonical_key(odd) and rows[canonical_key(odd)]["row_count"] == 5
    assert rows["{}"]["error_status"] is True and rows["{}"]["error_message"] == "boom"
    assert tracker.is_processed("orders", "orders", json.loads(odd))
    (conversion,) = open_lineage(lake, "sales").records().values()
    assert (conversion["source_path"], conversion["row_count"]) == ("s3://bucket/sales/a.csv", 3)
    assert json.loads(conversion["extra"]) == {"refreshEnabled": True}
    assert legacy_fingerprint(lake) is None  # nothing left: the sensor asks for no run
    status = json.loads(run_cli("--config", str(config), "status", "--json").stdout)
    assert status["migrations"] == ["sales-conversions", "sales-partition_status", "sales-table_completion"]

"""What orchestration costs as the lake grows: loading the Dagster code location, and one
``lake_change_sensor`` tick (first tick: every batch new; a quiet tick: nothing changed; a tick
after one file changed), on local disk and on the loopback S3.

``python -m aperio_assets.bench.orchestration [--files N ...] [--s3-files N ...]`` prints one JSON
line per measurement. The lineage of a "refreshed" lake is written directly (one row per raw file,
as a refresh would record it), so a lake of 100,000 files needs no 100,000 conversions to measure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aperio_assets import layout
from aperio_assets.conversion.refresh import SchemaRefresh, _mtime_ms
from aperio_assets.lake import Lake, open_lake
from aperio_assets.state.access import open_state

TABLES = 200  # small one-file tables beside the partitioned one


def write_lake(lake: Lake, files: int) -> None:
    """``files`` raw files: 200 one-file tables, the rest one per Hive partition of ``events``."""
    storage = lake.lake_storage
    base = lake.config.base_directory
    body = b"id,v\n1,2\n"
    paths = [f"sales/t{i:03d}.csv" for i in range(min(TABLES, files))]
    paths += [f"sales/events/day={d:06d}/part.csv" for d in range(files - len(paths))]
    if storage.local_path(base) is not None:
        for p in paths:
            target = Path(base, p)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda p: storage.write_bytes(storage.join(base, p), body), paths))


def record_lineage(lake: Lake) -> None:
    """Lineage rows for every raw file, as a refresh records them (no conversion is run)."""
    run = SchemaRefresh(lake, lake.schema("sales"))
    rows = [
        {
            "source_path": raw.path,
            "target_path": run.named_target(table, raw),
            "converted_at": 1,
            "conversion_type": "csv->parquet",
            "row_count": 1,
            "source_size": raw.info.size,
            "source_modified": _mtime_ms(raw.info.mtime),
            "source_etag": raw.info.etag,
            "table_name": table.name,
            "error": None,
            "extra": None,
        }
        for table in run.discovery.tables
        for raw in table.files
    ]
    open_state(lake, "sales", layout.CONVERSIONS).apply(rows, [])


def load_seconds(config: str) -> float:
    """A fresh interpreter importing the code location (what `dagster dev` / a run worker does)."""
    code = (
        "import time; t = time.perf_counter(); import aperio_assets.definitions as d; "
        "d.defs().resolve_asset_graph(); print(time.perf_counter() - t)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "APERIO_CONFIG": config, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def import_seconds() -> float:
    code = (
        "import time; t = time.perf_counter(); import dagster, aperio_assets.defs.assets; "
        "print(time.perf_counter() - t)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def sensor_ticks(config: str) -> dict[str, float | int]:
    """Seconds of three ticks of ``lake_change_sensor`` on a fresh instance."""
    import dagster as dg

    from aperio_assets.definitions import build_defs
    from aperio_assets.defs.resources import AperioResource

    aperio = AperioResource(config_path=config)
    out: dict[str, float | int] = {}
    with dg.instance_for_test() as instance:
        # (built with the instance current: Dagster's load context keeps a reference to it)
        defs = build_defs(config, aperio)
        sensor = defs.resolve_sensor_def("lake_change_sensor")

        def tick(cursor: str | None):
            context = dg.build_sensor_context(
                instance_ref=instance.get_ref(), resources={"aperio": aperio}, cursor=cursor, definitions=defs
            )
            started = time.perf_counter()
            result = sensor.evaluate_tick(context)
            return result, time.perf_counter() - started

        first, out["first tick s"] = tick(None)
        out["first tick runs"] = len(first.run_requests)
        for request in first.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        out["batches"] = sum(len(r.partition_keys) for r in first.dynamic_partitions_requests)
        record_lineage(aperio.lake())  # as if the runs had converted everything
        settled, out["settling tick s"] = tick(first.cursor)
        quiet, out["quiet tick s"] = tick(settled.cursor)
        out["quiet tick runs"] = len(quiet.run_requests)
        lake = aperio.lake()
        lake.lake_storage.write_bytes(
            lake.lake_storage.join(lake.config.base_directory, "sales/t000.csv"), b"id,v\n1,3\n"
        )
        changed, out["one change tick s"] = tick(quiet.cursor)
        out["one change tick runs"] = len(changed.run_requests)
    return out


def measure(kind: str, files: int, endpoint: str | None = None, bucket: str | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp, "aperio.yaml")
        if kind == "local":
            Path(tmp, "lake", "sales").mkdir(parents=True)
            config.write_text("baseDirectory: lake\n")
        else:
            prefix = f"lake{files}-{int(time.time())}"
            config.write_text(f"baseDirectory: s3://{bucket}/{prefix}\nstorage:\n  s3:\n    endpoint_url: {endpoint}\n")
        lake = open_lake(config)
        started = time.perf_counter()
        write_lake(lake, files)
        row: dict = {"storage": kind, "raw files": files, "write s": round(time.perf_counter() - started, 1)}
        row["code location load s"] = round(load_seconds(str(config)), 2)
        row.update({k: round(v, 2) if isinstance(v, float) else v for k, v in sensor_ticks(str(config)).items()})
        return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, nargs="*", default=[1_200, 10_000, 100_000])
    parser.add_argument("--s3-files", type=int, nargs="*", default=[1_200, 10_000])
    args = parser.parse_args(argv)
    print(json.dumps({"import dagster + aperio defs s": round(import_seconds(), 2)}), flush=True)
    for files in args.files:
        print(json.dumps(measure("local", files)), flush=True)
    if args.s3_files:
        from aperio_assets.bench.s3server import loopback_s3

        with loopback_s3() as s3:
            for files in args.s3_files:
                print(json.dumps(measure("s3", files, s3.endpoint_url, s3.bucket)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

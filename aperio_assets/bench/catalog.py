"""Catalog connect time with 10 / 100 / 1,000 views, on local disk and on a loopback S3 server: the
first connect after the view definitions changed (views are bound, into the machine-local cache) and
the following ones (the cache is attached; views bind when queried). Run:
``python -m aperio_assets.bench.catalog`` (needs moto, a test extra, for the S3 server)."""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import polars as pl

from aperio_assets.catalog import ViewStore, open_catalog
from aperio_assets.catalog.views import table_scan_sql
from aperio_assets.lake import open_lake


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lake(root: Path, base: str, endpoint: str | None, views: int):
    config = root / f"aperio-{views}.yaml"
    storage = f"storage:\n  s3:\n    endpoint_url: {endpoint}\n" if endpoint else ""
    config.write_text(f"baseDirectory: {base}\nschemas: [bench]\n{storage}")
    lake = open_lake(str(config))
    buffer = io.BytesIO()
    pl.DataFrame({"id": [1, 2, 3], "name": ["a", "b", "c"]}).write_parquet(buffer)
    store = ViewStore(lake)
    rows = []
    for i in range(views):
        path = lake.storage.aperio_path("bench", f"tables/t{i}/data.parquet")
        lake.storage.write_bytes(path, buffer.getvalue())
        rows.append({"schema_name": "bench", "view_name": f"t{i}", "origin": "generated",
                     "sql": table_scan_sql([lake.storage.join(os.path.dirname(path), "*.parquet")])})
    store.table.write(upserts=rows)
    return lake


def measure(counts: list[int], repetitions: int) -> list[dict]:
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    rows = []
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="aperio-bench")
        with tempfile.TemporaryDirectory(prefix="aperio-catalog-bench-") as tmp:
            places = (("local", str(Path(tmp) / "lake"), None), ("s3", "s3://aperio-bench/lake", endpoint))
            for storage, base, ep in places:
                for n in counts:
                    lake = _lake(Path(tmp), f"{base}-{n}", ep, n)
                    os.environ["APERIO_CACHE_DIR"] = str(Path(tmp) / f"cache-{storage}-{n}")
                    con, built = open_catalog(lake)
                    assert built.cache == "built" and built.views == n and not built.broken, built.broken
                    assert con.execute("SELECT count(*) FROM bench.t0").fetchone() == (3,)
                    warm = []
                    for _ in range(repetitions):
                        con, report = open_catalog(lake)
                        assert report.cache == "hit" and report.views == n
                        warm.append(report.seconds)
                    started = time.perf_counter()
                    con.execute(f"SELECT count(*) FROM bench.t{n - 1}").fetchall()
                    first_query = time.perf_counter() - started
                    rows.append({"storage": storage, "views": n, "first_connect_s": round(built.seconds, 3),
                                 "connect_s": round(statistics.median(warm), 3),
                                 "first_query_s": round(first_query, 3)})
    finally:
        server.stop()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--views", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"{'storage':8s} {'views':>6s} {'first connect s':>16s} {'connect s':>10s} {'first query s':>14s}")
    for r in measure(args.views, args.repetitions):
        print(f"{r['storage']:8s} {r['views']:6d} {r['first_connect_s']:16.3f} {r['connect_s']:10.3f} "
              f"{r['first_query_s']:14.3f}")


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"(total {time.perf_counter() - started:.0f} s)")

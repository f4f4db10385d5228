"""A process that only tracks batches pays only for what it uses: the tracker path imports neither
Dagster, Polars nor the catalog (nor DuckDB in shared mode). A fresh process's first lookup is one of
the rows `aperio bench` compares with the legacy DuckDB file, imports included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("dagster", "polars", "aperio_assets.catalog", "duckdb")
CHILD = """
import json, sys
from aperio_assets.state import open_tracker
tracker = open_tracker(sys.argv[1], "bench")
tracker.mark_processed("flights", "flights", {"year": "2024"}, row_count=3)
looked_up = [tracker.is_processed("flights", "flights", {"year": "2024"}),
             tracker.filter_unprocessed("flights", "flights", [{"year": "2024"}, {"year": "2025"}])]
heavy = sorted({m for m in sys.modules for h in json.loads(sys.argv[2]) if m == h or m.startswith(h + ".")})
print(json.dumps({"looked_up": looked_up, "heavy": heavy}))
"""


@pytest.mark.parametrize("mode", ["shared", "local"])
def test_the_tracker_path_imports_no_dagster_polars_or_catalog(tmp_path: Path, mode: str) -> None:
    (tmp_path / "lake" / "bench").mkdir(parents=True)
    config = tmp_path / "aperio.yaml"
    config.write_text(f"baseDirectory: lake\nstateStorage: {mode}\nschemas: [bench]\n")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(config), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["looked_up"] == [True, [1]]  # the lookups really ran
    # the legacy store is DuckDB itself; nothing else heavy is imported in either mode
    found = sorted(
        {"aperio_assets.catalog" if m.startswith("aperio_assets.") else m.split(".")[0] for m in answer["heavy"]}
    )
    assert found == ([] if mode == "shared" else ["duckdb"]), answer["heavy"]

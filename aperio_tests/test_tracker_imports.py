"""A process that only tracks batches pays only for what it uses: the tracker path imports neither
Dagster, Polars nor the catalog (nor DuckDB in shared mode). A fresh process's first lookup is one of
the rows `aperio bench` compares with the legacy DuckDB file, imports included; its lookups build
their Arrow values from bytes, so that pyarrow does not import pandas (~0.2 s) to check a Python
value's type."""

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
LOOKUP_CHILD = """
import importlib.util, json, sys
from aperio_assets.state import open_tracker
tracker = open_tracker(sys.argv[1], "bench")
looked_up = [tracker.is_processed("flights", "flights", {"year": "2024"}),
             tracker.is_processed("flights", "flights", {"year": "2026"}),
             tracker.filter_unprocessed("flights", "flights", [{"year": "2024"}, {"year": "2025"}])]
print(json.dumps({"looked_up": looked_up, "pandas_imported": "pandas" in sys.modules,
                  "pandas_installed": importlib.util.find_spec("pandas") is not None}))
"""


def _run_child(code: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_fresh_process_lookup_does_not_import_pandas(tmp_path: Path) -> None:
    from aperio_assets.state import open_tracker

    (tmp_path / "lake" / "bench").mkdir(parents=True)
    config = tmp_path / "aperio.yaml"
    config.write_text("baseDirectory: lake\nschemas: [bench]\n")
    writer = open_tracker(str(config), "bench")
    writer.mark_processed("flights", "flights", {"year": "2024"}, row_count=3)
    writer.mark_processed("flights", "flights", {"year": "2026"}, row_count=4)  # two files: a merged read
    writer.invalidate("flights", {"year": "2026"})  # and a tombstone

    answer = _run_child(LOOKUP_CHILD, str(config))
    assert answer["looked_up"] == [True, False, [1]]
    assert answer["pandas_installed"], "pandas is not installed: this test would prove nothing"
    assert not answer["pandas_imported"]


@pytest.mark.parametrize("mode", ["shared", "local"])
def test_the_tracker_path_imports_no_dagster_polars_or_catalog(tmp_path: Path, mode: str) -> None:
    (tmp_path / "lake" / "bench").mkdir(parents=True)
    config = tmp_path / "aperio.yaml"
    config.write_text(f"baseDirectory: lake\nstateStorage: {mode}\nschemas: [bench]\n")
    answer = _run_child(CHILD, str(config), json.dumps(HEAVY))
    assert answer["looked_up"] == [True, [1]]  # the lookups really ran
    # the legacy store is DuckDB itself; nothing else heavy is imported in either mode
    found = sorted(
        {"aperio_assets.catalog" if m.startswith("aperio_assets.") else m.split(".")[0] for m in answer["heavy"]}
    )
    assert found == ([] if mode == "shared" else ["duckdb"]), answer["heavy"]

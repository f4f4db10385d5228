"""The code location laid out the ``dg`` way, checked the Dagster way: ``defs`` is a lazy
``@dg.definitions`` function (importing it reads nothing), the ``defs/`` folder is loaded by
``dg.load_from_defs_folder`` and merged with what the configuration generates, each object once; a
snapshot of the asset specs, jobs, schedules and sensors against an exact expected structure;
``Definitions.validate_loadable``; ``dg check defs`` and ``dg list defs`` in subprocesses; the
launcher builds the definitions once per process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from aperio_assets.definitions import build_defs, defs_folder
from aperio_tests.helpers import ROOT, LakeCase

# Run in a fresh interpreter: records, through an audit hook, every read of the configuration file,
# every listing under the lake's local directory and every network connection, while the code
# location is imported, then while Dagster's way of loading it (calling ``defs``) runs.
IMPORT_PROBE = r"""
import json, os, sys

config, lake = os.path.realpath(os.environ["APERIO_CONFIG"]), sys.argv[1]
events, busy = [], [False]

def hook(event, args):
    if busy[0] or event not in ("open", "os.listdir", "os.scandir", "socket.connect"):
        return
    busy[0] = True
    try:
        if event == "socket.connect":
            events.append(f"connected to {args[1]}")
        elif args and isinstance(args[0], (str, os.PathLike)):
            path = os.path.realpath(args[0])
            if event == "open" and path == config:
                events.append("read the configuration")
            elif event != "open" and not lake.startswith("s3://") and path.startswith(lake):
                events.append(f"listed {path}")
    finally:
        busy[0] = False

sys.addaudithook(hook)
import aperio_assets.definitions as location

on_import = list(events)
loaded = location.defs()
keys = sorted(k.to_user_string() for k in loaded.resolve_asset_graph().get_all_asset_keys())
print(json.dumps({"import": on_import, "load": events[len(on_import):], "assets": keys}))
"""


def run_python(code: str, *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_code_location_reads_nothing(lake_case: LakeCase) -> None:
    """Importing ``aperio_assets.definitions`` neither reads the configuration nor lists the lake nor
    connects to S3; loading it the way Dagster does (calling ``defs``) does all three."""
    lake = lake_case.base if lake_case.kind == "s3" else os.path.realpath(lake_case.base)
    seen = run_python(IMPORT_PROBE, lake, env={"APERIO_CONFIG": lake_case.config_path})
    assert seen["import"] == []
    assert "read the configuration" in seen["load"]
    if lake_case.kind == "s3":  # the schemas are not listed in the configuration: the top of the lake is
        assert any(e.startswith("connected to") for e in seen["load"]), seen["load"]
    else:
        assert f"listed {lake}" in seen["load"], seen["load"]
    assert "sales/partition_status" in seen["assets"]


# A small configured lake: one schema with shared state, one with local (legacy) state, listed in
# the configuration (so building the definitions lists nothing).
SNAPSHOT_CONFIG = "baseDirectory: lake\nschemas:\n  - sales\n  - name: ref\n    stateStorage: local\n"
AFTER_BATCHES = "after its batches"


def schema_snapshot(schema: str, kinds: list[str]) -> dict[str, dict[str, Any]]:
    batches = f"{schema}_batches"
    return {
        f"{schema}/conversion_lineage": {
            "group": schema,
            "partitions": batches,
            "deps": [],
            "kinds": kinds,
            "automation": None,
            "checks": [],
        },
        f"{schema}/partition_status": {
            "group": schema,
            "partitions": batches,
            "deps": [f"{schema}/conversion_lineage"],
            "kinds": kinds,
            "automation": None,
            "checks": [],
        },
        f"{schema}/generated_model": {
            "group": schema,
            "partitions": None,
            "deps": [f"{schema}/partition_status"],
            "kinds": kinds,
            "automation": AFTER_BATCHES,
            "checks": ["conversions_succeed", "lineage_state_health", "status_state_health"],
        },
    }


EXPECTED_ASSETS = {
    **schema_snapshot("sales", ["parquet", "polars"]),
    **schema_snapshot("ref", ["duckdb", "json"]),
    "aperio/catalog_views": {
        "group": "aperio",
        "partitions": None,
        "deps": ["ref/generated_model", "sales/generated_model"],
        "kinds": ["duckdb", "parquet"],
        "automation": "after every schema's batches",
        "checks": ["state_health", "views_resolve"],
    },
}
EXPECTED_JOBS = {
    "sales_batches_job": {"assets": ["sales/conversion_lineage", "sales/partition_status"], "checks": []},
    "ref_batches_job": {"assets": ["ref/conversion_lineage", "ref/partition_status"], "checks": []},
    "aperio_catalog_job": {
        "assets": ["aperio/catalog_views", "ref/generated_model", "sales/generated_model"],
        "checks": [
            "aperio/catalog_views:state_health",
            "aperio/catalog_views:views_resolve",
            *(
                f"{s}/generated_model:{c}"
                for s in ("ref", "sales")
                for c in ("conversions_succeed", "lineage_state_health", "status_state_health")
            ),
        ],
    },
    "catalog_views_job": {
        "assets": ["aperio/catalog_views"],
        "checks": ["aperio/catalog_views:state_health", "aperio/catalog_views:views_resolve"],
    },
    "aperio_refresh_job": {"ops": ["refresh_lake"]},
    "migrate_legacy_state_job": {"ops": ["migrate_legacy_state"]},
    "compact_state_job": {"ops": ["compact_state"]},
}
EXPECTED_SCHEDULES = {
    "compact_state_schedule": {"job": "compact_state_job", "cron": "0 * * * *", "status": "RUNNING"},
    "catalog_views_schedule": {"job": "catalog_views_job", "cron": "30 3 * * *", "status": "RUNNING"},
}
EXPECTED_SENSORS = {
    "legacy_state_sensor": {"targets": ["migrate_legacy_state_job"], "status": "RUNNING"},
    "lake_change_sensor": {
        "targets": ["aperio_catalog_job", "ref_batches_job", "sales_batches_job"],
        "status": "STOPPED",
    },
    "aperio_automation_sensor": {
        "targets": ["aperio/catalog_views", "ref/generated_model", "sales/generated_model"],
        "status": "RUNNING",
    },
}


def snapshot(defs: dg.Definitions) -> dict[str, Any]:
    """What a Dagster engineer sees of the code location: the asset specs (key, group, partitions,
    deps, kinds, automation condition's label, checks), the jobs, schedules and sensors."""
    graph = defs.resolve_asset_graph()
    checks: dict[str, list[str]] = {}
    for key in graph.asset_check_keys:
        checks.setdefault(key.asset_key.to_user_string(), []).append(key.name)
    assets = {}
    for spec in defs.resolve_all_asset_specs():
        name = spec.key.to_user_string()
        assets[name] = {
            "group": spec.group_name,
            "partitions": getattr(spec.partitions_def, "name", None),
            "deps": sorted(d.asset_key.to_user_string() for d in spec.deps),
            "kinds": sorted(spec.kinds),
            "automation": spec.automation_condition.get_label() if spec.automation_condition else None,
            "checks": sorted(checks.get(name, [])),
        }
    jobs = {}
    for job in defs.resolve_all_job_defs():
        if job.name == "__ASSET_JOB":  # Dagster's implicit job of every asset
            continue
        selected = job.asset_layer.selected_asset_keys
        if selected:
            jobs[job.name] = {
                "assets": sorted(k.to_user_string() for k in selected),
                "checks": sorted(
                    f"{k.asset_key.to_user_string()}:{k.name}"
                    for node in job.asset_layer.data
                    for k in node.assets_def.check_keys
                ),
            }
        else:
            jobs[job.name] = {"ops": sorted(node.name for node in job.nodes)}
    schedules = {
        s.name: {"job": s.job_name, "cron": s.cron_schedule, "status": s.default_status.value}
        for s in (defs.resolve_schedule_def(unresolved.name) for unresolved in defs.schedules or [])
    }
    sensors = {}
    for sensor in (defs.resolve_sensor_def(unresolved.name) for unresolved in defs.sensors or []):
        if sensor.asset_selection is not None:
            targets = sorted(k.to_user_string() for k in sensor.asset_selection.resolve(graph))
        else:
            targets = sorted(t.job_name for t in sensor.targets)
        sensors[sensor.name] = {"targets": targets, "status": sensor.default_status.value}
    return {"assets": assets, "jobs": jobs, "schedules": schedules, "sensors": sensors}


@pytest.fixture
def snapshot_config(tmp_path: Path) -> Path:
    (tmp_path / "aperio.yaml").write_text(SNAPSHOT_CONFIG)
    return tmp_path / "aperio.yaml"


def test_snapshot_of_the_code_location(snapshot_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APERIO_CONFIG", str(snapshot_config))
    from aperio_assets.definitions import defs

    location = defs()  # as Dagster loads it
    with dg.instance_for_test():
        dg.Definitions.validate_loadable(location)
    got = snapshot(location)
    assert got["assets"] == EXPECTED_ASSETS
    assert got["jobs"] == EXPECTED_JOBS
    assert got["schedules"] == EXPECTED_SCHEDULES
    assert got["sensors"] == EXPECTED_SENSORS
    # build_defs (the tests', the launcher's) gives the same definitions for the same configuration
    assert snapshot(build_defs(snapshot_config)) == got


def test_every_object_is_defined_once(snapshot_config: Path) -> None:
    """The defs folder and the generated definitions share nothing: no object, and no name, twice."""
    folder, location = defs_folder(), build_defs(snapshot_config)
    for kind in ("assets", "asset_checks", "jobs", "schedules", "sensors"):
        objects = list(getattr(location, kind) or [])
        assert len({id(o) for o in objects}) == len(objects), kind
    names = Counter(o.name for kind in ("jobs", "schedules", "sensors") for o in getattr(location, kind))
    assert [n for n, count in names.items() if count > 1] == []
    # what the folder holds: everything that does not depend on the lake, and nothing that does
    assert sorted(j.name for j in folder.jobs) == [
        "aperio_refresh_job",
        "catalog_views_job",
        "compact_state_job",
        "migrate_legacy_state_job",
    ]
    assert sorted(s.name for s in folder.schedules) == ["catalog_views_schedule", "compact_state_schedule"]
    assert sorted(s.name for s in folder.sensors) == ["legacy_state_sensor"]
    assert not folder.assets and not folder.resources
    assert sorted(c.check_key.name for c in folder.asset_checks) == ["state_health", "views_resolve"]


def test_dg_check_and_list_defs(snapshot_config: Path, tmp_path: Path) -> None:
    """``dg check defs`` loads the project's code location ([tool.dg] in pyproject.toml) and
    ``dg list defs`` shows what the configuration generates."""
    (tmp_path / "home").mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "APERIO_CONFIG": str(snapshot_config)}
    dg_cli = str(Path(sys.executable).with_name("dg"))
    # real processes: the `dg` script, reading [tool.dg] from the project's pyproject.toml
    checked = subprocess.run([dg_cli, "check", "defs"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
    assert "All definitions loaded successfully." in checked.stdout
    listed = subprocess.run(
        [dg_cli, "list", "defs", "--json"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert listed.returncode == 0, listed.stdout[-2000:] + listed.stderr[-2000:]
    shown = json.loads(listed.stdout)
    assets = {
        a["asset_key"]: {
            "group": a["group_name"],
            "deps": sorted(a["dependency_keys"]),
            "kinds": sorted(a["kinds"]),
            "automation": (a.get("automation_condition") or {}).get("label"),
        }
        for a in shown["assets"]
    }
    aspects = ("group", "deps", "kinds", "automation")
    assert assets == {key: {a: spec[a] for a in aspects} for key, spec in EXPECTED_ASSETS.items()}
    checks = sorted(c["key"] for c in shown["asset_checks"])
    assert checks == sorted(f"{key}:{c}" for key, spec in EXPECTED_ASSETS.items() for c in spec["checks"])
    assert sorted(j["name"] for j in shown["jobs"]) == sorted(EXPECTED_JOBS)
    assert {s["name"]: s["cron_schedule"] for s in shown["schedules"]} == {
        name: s["cron"] for name, s in EXPECTED_SCHEDULES.items()
    }
    assert sorted(s["name"] for s in shown["sensors"]) == sorted(EXPECTED_SENSORS)
    assert sorted(r["name"] for r in shown["resources"]) == ["aperio", "aperio_state_io"]


# Run in a fresh interpreter: counts the builds of the definitions (one per schema_assets call per
# schema) while the launcher refreshes the lake twice in this one process.
LAUNCH_PROBE = r"""
import json, sys

import aperio_assets.defs.assets as assets

builds, schema_assets = [], assets.schema_assets

def counted(schema):
    builds.append(schema.name)
    return schema_assets(schema)

assets.schema_assets = counted  # before the code location is imported, which binds it
from aperio_assets.defs import launch

first = launch.refresh_with_runs(sys.argv[1], workers=1)
again = launch.refresh_with_runs(sys.argv[1], workers=1)
print(json.dumps({"builds": builds, "failed": first.failed + again.failed, "runs": [r[0] for r in first.runs]}))
"""


def test_the_launcher_builds_the_definitions_once_per_process(lake_case: LakeCase) -> None:
    # (APERIO_CONFIG set, as `make run` sets it: the code location reads it when it is loaded)
    seen = run_python(LAUNCH_PROBE, lake_case.config_path, env={"APERIO_CONFIG": lake_case.config_path})
    assert seen["failed"] == []
    assert seen["runs"] == ["sales_batches_job", "aperio_catalog_job"]
    assert seen["builds"] == ["sales"]  # importing builds nothing; two refreshes, one build


def test_an_installed_package_loads_its_defs_folder(tmp_path: Path, snapshot_config: Path) -> None:
    """Installed without its pyproject.toml (as deploy/Dockerfile installs it), the package loads the
    same definitions."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "aperio_assets", site / "aperio_assets", ignore=shutil.ignore_patterns("__pycache__"))
    code = (
        "import json, aperio_assets, aperio_assets.definitions as d; loaded = d.defs(); "
        "print(json.dumps({'file': aperio_assets.__file__, 'jobs': sorted(j.name for j in loaded.jobs), "
        "'checks': sorted(c.check_key.name for c in loaded.asset_checks)}))"
    )
    seen = run_python(code, env={"PYTHONPATH": str(site), "APERIO_CONFIG": str(snapshot_config)}, cwd=tmp_path)
    assert seen["file"] == str(site / "aperio_assets" / "__init__.py")
    assert seen["jobs"] == sorted(EXPECTED_JOBS)
    assert Counter(seen["checks"]) == Counter(c for spec in EXPECTED_ASSETS.values() for c in spec["checks"])


def test_every_job_runs_its_steps_in_its_run_worker(snapshot_config: Path) -> None:
    """aperio's parallelism is runs; a process per step would cost each run a Python start and a
    code-location load per step: every job, the folder's included, uses the in-process executor."""
    jobs = build_defs(snapshot_config).get_repository_def().get_all_jobs()
    assert {j.name for j in jobs} >= {"aperio_catalog_job", "aperio_refresh_job", "compact_state_job"}
    assert {j.name: j.executor_def.name for j in jobs} == {j.name: "in_process" for j in jobs}

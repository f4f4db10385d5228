"""A Dagster batch run lists its schema once and reads each state file once (issue 15 item 5): the
lineage and status assets are one step that shares the listing and the state it read, and the IO
manager reuses the step's state tables (their files are immutable: a re-read fetches only new
files). A later run in the same process (a launcher worker) reads only the state files that process
has not read yet: another writer's, not its own earlier runs'. Local disk and the loopback S3."""

# (No ``from __future__ import annotations``: Dagster reads annotations at runtime.)
from collections import Counter

import dagster as dg
import pytest

from aperio_assets import layout
from aperio_assets.conversion.discovery import ListingSlice
from aperio_assets.conversion.refresh import SchemaRefresh, refresh
from aperio_assets.definitions import build_defs
from aperio_assets.defs.partitions import (
    BATCHES_PER_RUN_ENV,
    LISTING_SLICE_TAG,
    batches_partitions,
    slice_of,
    slice_tags,
)
from aperio_assets.defs.resources import AperioResource
from aperio_assets.defs.sensors import plan_schema
from aperio_assets.lake import Lake, open_lake
from aperio_assets.state import open_tracker
from aperio_assets.state.access import open_state
from aperio_assets.storage import LocalStorage, S3Storage
from aperio_tests.helpers import LakeCase, assert_same_state, lake_state, put


def _spy(
    patch: pytest.MonkeyPatch, entries: dict[str, list[list[str]]] | None = None
) -> tuple[list[str], Counter[str]]:
    """Record every recursive listing (and in ``entries``, by prefix, the paths each one returned) and
    every whole-file read, on both providers."""
    listed: list[str] = []
    reads: Counter[str] = Counter()
    for provider in (LocalStorage, S3Storage):
        real_list, real_read = provider.list, provider.read_bytes

        def listing(self, prefix, *, recursive=False, _real=real_list, **bounds):
            found = _real(self, prefix, recursive=recursive, **bounds)
            if recursive:
                listed.append(prefix.rstrip("/"))
                if entries is not None:
                    entries.setdefault(prefix.rstrip("/"), []).append([e.path for e in found])
            return found

        def reading(self, path, _real=real_read):
            reads[path] += 1
            return _real(self, path)

        patch.setattr(provider, "list", listing)
        patch.setattr(provider, "read_bytes", reading)
    return listed, reads


def test_a_batch_run_lists_its_schema_once_and_reads_each_state_file_once(lake_case: LakeCase) -> None:
    lake = lake_case.lake()
    keys = ["orders"]
    for i in range(6):
        put(lake, f"sales/events/day={i}/part.csv", f"v\n{i}\n".encode())
        keys.append(f"events/day={i}")
    defs = build_defs(lake_case.config_path, AperioResource(config_path=lake_case.config_path))
    job = defs.resolve_job_def("sales_batches_job")
    schema_dir = lake.schema("sales").directory.rstrip("/")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(batches_partitions("sales").name, keys)
        others: set[str] = set()
        for number, wave in enumerate((keys[:4], keys[4:])):
            if number == 1:  # another writer (a process of its own) marks a batch between the runs
                before = state_files(lake)
                open_tracker(open_lake(lake_case.config_path), "sales").mark_processed("elsewhere", "t", {"x": "1"})
                others = state_files(lake) - before
            tags = {"dagster/asset_partition_range_start": wave[0], "dagster/asset_partition_range_end": wave[-1]}
            with pytest.MonkeyPatch.context() as patch:
                recursive, reads = _spy(patch)
                result = job.execute_in_process(instance=instance, tags=tags)
            assert result.success
            steps = {e.step_key for e in result.all_events if e.step_key}
            assert steps == {"sales__batches"}  # lineage and status: one step
            assert recursive.count(schema_dir) == 1, recursive  # one discovery per run
            state_reads = {p: n for p, n in reads.items() if "/.aperio/" in p and p.endswith(".parquet")}
            assert all(n == 1 for n in state_reads.values()), state_reads
            materialized = Counter(
                (e.materialization.asset_key.to_user_string(), e.materialization.partition)
                for e in result.get_asset_materialization_events()
            )
            assert materialized == Counter(
                {(f"sales/{a}", k): 1 for a in ("conversion_lineage", "partition_status") for k in wave}
            )
        # The second run's state tables are the first run's (same process, same configuration): it
        # read the other writer's file, once, and none of the files the first run read or wrote.
        assert len(others) == 1 and state_reads == dict.fromkeys(others, 1), (others, state_reads)


def state_files(lake: Lake) -> set[str]:
    return {
        e.path for e in lake.storage.list(lake.config.aperio_directory, recursive=True) if e.path.endswith(".parquet")
    }


def test_a_planned_run_lists_only_the_slice_of_the_schema_that_holds_its_batches(
    lake_case: LakeCase, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run its planner requested (``lake_change_sensor``, the launcher: both list the whole schema)
    lists only the slice of the sorted listing that holds its batches' files, not the schema: a LIST
    per run of what it converts, not of the lake. A batch with files in two folders (``events/a/day=1``
    and ``events/b/day=1``) has them all in its slice; a file at the top of the schema is a table whose
    name depends on the other files there, so its run lists everything. The state is what one full
    refresh leaves."""
    monkeypatch.setenv(BATCHES_PER_RUN_ENV, "2")
    lake = lake_case.lake()
    files = {
        "events/a/day=1/x.csv": b"v\n1\n",
        "events/a/day=2/x.csv": b"v\n2\n",
        "events/b/day=1/y.csv": b"v\n11\n",
        "events/c/day=3/x.csv": b"v\n3\n",
        "events/c/day=4/x.csv": b"v\n4\n",
        "events/c/day=5/x.csv": b"v\n5\n",
        "orders.csv": b"id\n1\n",
    }
    for name, data in files.items():
        put(lake, f"sales/{name}", data)
    schema_dir = lake.schema("sales").directory.rstrip("/")
    path = {name: lake.lake_storage.join(schema_dir, name) for name in files}
    defs = build_defs(lake_case.config_path, AperioResource(config_path=lake_case.config_path))
    job = defs.resolve_job_def("sales_batches_job")
    with dg.instance_for_test() as instance:
        plan = plan_schema(lake, lake.schema("sales"), [], retry_failed=True)
        instance.add_dynamic_partitions(batches_partitions("sales").name, plan.changes.added)
        assert [
            (r.tags.get("dagster/asset_partition_range_start"), r.tags.get("dagster/asset_partition_range_end"))
            for r in plan.runs
        ] == [("events/day=1", "events/day=2"), ("events/day=3", "events/day=4"), ("events/day=5", "orders")]
        assert [LISTING_SLICE_TAG in r.tags for r in plan.runs] == [True, True, False]
        # each slice says how many files it held (a page-size hint for its LIST)
        assert [getattr(slice_of(r.tags), "files", None) for r in plan.runs] == [3, 2, None]
        listed: list[list[str]] = []
        for request in plan.runs:
            entries: dict[str, list[list[str]]] = {}
            with pytest.MonkeyPatch.context() as patch:
                _spy(patch, entries)
                result = job.execute_in_process(
                    instance=instance, partition_key=request.partition_key, tags=request.tags
                )
            assert result.success
            assert len(entries[schema_dir]) == 1  # one listing of the schema: its slice, or all of it
            listed += entries[schema_dir]
        assert defs.resolve_job_def("aperio_catalog_job").execute_in_process(instance=instance).success
        assert listed == [
            # day=1 and day=2: from day=1's first file to its last, day=2 between them
            [path["events/a/day=1/x.csv"], path["events/a/day=2/x.csv"], path["events/b/day=1/y.csv"]],
            [path["events/c/day=3/x.csv"], path["events/c/day=4/x.csv"]],
            sorted(path.values()),
        ]
    twin = lake_case.sibling(tmp_path, "twin")
    for name, data in files.items():
        put(twin, f"sales/{name}", data)
    refresh(twin)
    assert_same_state(lake_state(lake), lake_state(twin))
    assert len(lake_state(lake)["tables"]["events"]) == 6
    # a slice of the listing cannot say what is gone: asking is an error, never a forgotten file
    sliced = SchemaRefresh(lake, lake.schema("sales"))
    sliced.list_only(ListingSlice(path["events/c/day=3/x.csv"][:-1], path["events/c/day=4/x.csv"]))
    with pytest.raises(RuntimeError, match="cannot say which files are gone"):
        sliced.gone({})
    with pytest.raises(RuntimeError, match="cannot say which batches are gone"):
        sliced.vanished_batches([])


def test_a_run_whose_batches_are_not_all_in_its_slice_lists_the_whole_schema(lake_case: LakeCase) -> None:
    """The slice is the planner's: a run given one that does not hold all its batches (its tags
    copied to other partitions, or a batch's files moved since) lists the whole schema again rather
    than take a batch it cannot see for gone."""
    lake = lake_case.lake()
    for day in (1, 2, 3):
        put(lake, f"sales/events/day={day}/x.csv", f"v\n{day}\n".encode())
    schema_dir = lake.schema("sales").directory.rstrip("/")
    first = lake.lake_storage.join(schema_dir, "events/day=1/x.csv")
    defs = build_defs(lake_case.config_path, AperioResource(config_path=lake_case.config_path))
    keys = [f"events/day={day}" for day in (1, 2, 3)]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(batches_partitions("sales").name, keys)
        tags = {
            "dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1],
            **slice_tags(ListingSlice(first[:-1], first, 1)),  # day=1's slice, for days 1 to 3
        }
        entries: dict[str, list[list[str]]] = {}
        with pytest.MonkeyPatch.context() as patch:
            _spy(patch, entries)
            result = defs.resolve_job_def("sales_batches_job").execute_in_process(instance=instance, tags=tags)
        assert result.success
        everything = len(lake.lake_storage.list(schema_dir, recursive=True))  # (the fixture's orders.csv too)
        assert [len(found) for found in entries[schema_dir]] == [1, everything]  # the slice, then all
        materialized = {
            (e.materialization.asset_key.to_user_string(), e.materialization.partition)
            for e in result.get_asset_materialization_events()
        }
        assert materialized == {(f"sales/{a}", k) for a in ("conversion_lineage", "partition_status") for k in keys}
    rows = open_state(open_lake(lake_case.config_path), "sales", layout.CONVERSIONS).rows()
    assert sorted(r["source_path"].rsplit("/", 2)[-2] for r in rows if not r.get("error")) == [
        "day=1",
        "day=2",
        "day=3",
    ]


def test_a_run_checks_its_unchanged_files_outputs_in_a_slice_of_tables_not_all_of_it(
    lake_case: LakeCase, tmp_path
) -> None:
    """A batch run over files converted before (a batch with one file changed, the other not) checks
    that the unchanged file's output is still there before skipping it. It lists the slice of
    ``tables/`` from the first such output to the last, not every converted file of the schema (a
    LIST per run of what it converts, not of the lake). An output that is gone is converted again."""
    lake = lake_case.lake()
    files = {f"events/day={day}/{name}.csv": f"v\n{day}{name}\n".encode() for day in range(1, 6) for name in "xy"}
    files["orders.csv"] = b"id\n1\n"  # (the fixture's, written the same in the twin)
    for name, data in files.items():
        put(lake, f"sales/{name}", data)
    refresh(lake)
    run = SchemaRefresh(lake, lake.schema("sales"))
    tables = run.tables_root.rstrip("/")
    outputs = sorted(e.path for e in lake.storage.list(tables, recursive=True))
    assert len(outputs) == 11
    day3_y = next(p for p in outputs if "day=3/y.csv" in p)
    day4_x, day4_y = (next(p for p in outputs if f"day=4/{name}.csv" in p) for name in "xy")
    put(lake, "sales/events/day=3/x.csv", b"v\n99\n")  # day=3: x changed, y not
    put(lake, "sales/events/day=4/x.csv", b"v\n98\n")  # day=4: x changed, y not, and y's output gone
    lake.storage.delete(day4_y)
    defs = build_defs(lake_case.config_path, AperioResource(config_path=lake_case.config_path))
    keys = [f"events/day={day}" for day in range(1, 6)]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(batches_partitions("sales").name, keys)
        tags = {"dagster/asset_partition_range_start": keys[2], "dagster/asset_partition_range_end": keys[3]}
        entries: dict[str, list[list[str]]] = {}
        with pytest.MonkeyPatch.context() as patch:
            _spy(patch, entries)
            result = defs.resolve_job_def("sales_batches_job").execute_in_process(instance=instance, tags=tags)
        assert result.success
        assert defs.resolve_job_def("aperio_catalog_job").execute_in_process(instance=instance).success  # the model
    # one listing of tables/: from day=3's y output to day=4's (gone), and what sorts between them
    assert entries[tables] == [[day3_y, day4_x]]
    assert lake.storage.exists(day4_y)  # converted again
    twin = lake_case.sibling(tmp_path, "twin")
    for name, data in files.items():
        put(twin, f"sales/{name}", data)
    put(twin, "sales/events/day=3/x.csv", b"v\n99\n")
    put(twin, "sales/events/day=4/x.csv", b"v\n98\n")
    refresh(twin)
    assert_same_state(lake_state(lake), lake_state(twin))

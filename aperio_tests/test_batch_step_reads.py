"""A Dagster batch run lists its schema once and reads each state file once (issue 15 item 5): the
lineage and status assets are one step that shares the listing and the state it read, and the IO
manager reuses the step's state tables (their files are immutable: a re-read fetches only new
files). A later run in the same process (a launcher worker) reads only the state files that process
has not read yet: another writer's, not its own earlier runs'. Local disk and the loopback S3."""

# (No ``from __future__ import annotations``: Dagster reads annotations at runtime.)
from collections import Counter

import dagster as dg
import pytest

from aperio_assets.definitions import build_defs
from aperio_assets.defs.partitions import batches_partitions
from aperio_assets.defs.resources import AperioResource
from aperio_assets.lake import Lake, open_lake
from aperio_assets.state import open_tracker
from aperio_assets.storage import LocalStorage, S3Storage
from aperio_tests.helpers import LakeCase, put


def _spy(patch: pytest.MonkeyPatch) -> tuple[list[str], Counter[str]]:
    """Record every recursive listing and every whole-file read, on both providers."""
    listed: list[str] = []
    reads: Counter[str] = Counter()
    for provider in (LocalStorage, S3Storage):
        real_list, real_read = provider.list, provider.read_bytes

        def listing(self, prefix, *, recursive=False, _real=real_list):
            if recursive:
                listed.append(prefix.rstrip("/"))
            return _real(self, prefix, recursive=recursive)

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

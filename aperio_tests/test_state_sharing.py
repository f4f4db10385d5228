"""One state table per directory per Lake (issue 16): the tracker, the lineage, the state access the
IO manager uses and the catalog of one Lake read and write a directory through one ``StateTable``,
so a file one of them wrote or read is never fetched again by another. Local disk and the loopback
S3 (request counts from the Lake's storage)."""

from __future__ import annotations

import pytest

from aperio_assets.catalog import open_catalog
from aperio_assets.catalog.cache import PROCESS_CACHE
from aperio_assets.lake import Lake
from aperio_assets.state import ParquetPartitionStatusStore, open_lineage, open_tracker
from aperio_assets.state.access import SharedStateAccess, open_state, schema_table, state_directory
from aperio_assets.state.lineage import ParquetLineage
from aperio_assets.state.tables import CONVERSIONS, PARTITION_STATUS, TABLE_COMPLETION, VIEWS
from aperio_tests.helpers import LakeCase


def _requests(lake: Lake) -> dict[str, int]:
    return {kind: n for kind, n in lake.storage.counters.snapshot().items() if n}


@pytest.fixture(autouse=True)
def _a_fresh_process() -> None:
    PROCESS_CACHE.clear()


def test_a_lakes_tracker_lineage_and_state_access_share_one_table_per_directory(lake_case: LakeCase) -> None:
    lake = lake_case.lake()
    tracker = open_tracker(lake, "sales")
    assert isinstance(tracker, ParquetPartitionStatusStore)
    assert tracker.status is schema_table(lake, "sales", PARTITION_STATUS)
    assert tracker.completion is schema_table(lake, "sales", TABLE_COMPLETION)
    assert open_tracker(lake, "sales").status is tracker.status  # a second tracker: the same tables
    access = open_state(lake, "sales", "partition_status")
    assert isinstance(access, SharedStateAccess) and access.table is tracker.status
    lineage = open_lineage(lake, "sales")
    assert isinstance(lineage, ParquetLineage) and lineage.table is schema_table(lake, "sales", CONVERSIONS)

    # another process (another Lake) writes a status file: read once, by whichever user reads first
    open_tracker(lake_case.lake(), "sales").mark_processed("orders", "orders", {"month": "01"}, row_count=1)
    lake.storage.counters.reset()
    assert tracker.is_processed("orders", "orders", {"month": "01"})
    assert _requests(lake) == {"LIST": 1, "GET": 1}
    lake.storage.counters.reset()
    assert [r["row_count"] for r in access.rows()] == [1]
    assert _requests(lake) == {"LIST": 1}  # the file the tracker read is not fetched again
    # a write through one user is seen by the other without fetching it
    access.apply(upserts=[{**access.rows()[0], "incremental_key_values": '{"month":"02"}', "row_count": 2}])
    lake.storage.counters.reset()
    assert tracker.is_processed("orders", "orders", {"month": "02"})
    assert _requests(lake) == {"LIST": 1}
    lake.storage.counters.reset()
    tracker.mark_processed("orders", "orders", {"month": "03"}, row_count=3)
    assert sorted(r["row_count"] for r in access.rows()) == [1, 2, 3]
    assert _requests(lake) == {"PUT": 1, "LIST": 1}


def test_a_catalog_connect_reads_the_state_through_the_lakes_tables(lake_case: LakeCase) -> None:
    lake = lake_case.lake()
    tracker = open_tracker(lake, "sales")
    tracker.mark_processed("orders", "orders", {"month": "01"}, row_count=1)
    open_catalog(lake)[0].close()
    directories = [state_directory(lake, "sales", spec) for spec in (PARTITION_STATUS, TABLE_COMPLETION, CONVERSIONS)]
    directories.append(state_directory(lake, None, VIEWS))
    assert isinstance(tracker, ParquetPartitionStatusStore)
    assert PROCESS_CACHE.state.reader(lake, directories[0], PARTITION_STATUS) is tracker.status
    # the tracker's own write: the next connect lists each state directory and fetches nothing
    tracker.mark_processed("orders", "orders", {"month": "02"}, row_count=2)
    lake.storage.counters.reset()
    con, report = open_catalog(lake)
    assert report.cache == "hit"
    assert _requests(lake) == {"LIST": len(directories)}
    assert con.execute("SELECT sum(row_count) FROM aperio.partition_status").fetchone() == (3,)
    con.close()
    # ... and connecting twice in a row reads the rows its refresh read: no second LIST
    lake.storage.counters.reset()
    open_catalog(lake)[0].close()
    assert _requests(lake) == {"LIST": len(directories)}
    # forgetting the process's readers forgets the Lake's tables too: as a new process, all fetched again
    PROCESS_CACHE.clear()
    assert PROCESS_CACHE.state.reader(lake, directories[0], PARTITION_STATUS) is not tracker.status
    lake.storage.counters.reset()
    open_catalog(lake)[0].close()
    cold = _requests(lake)
    assert cold == {"LIST": len(directories), "GET": sum(len(lake.storage.list(d)) for d in directories)}

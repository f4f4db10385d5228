"""Property: any interleaving of tracker operations reads back exactly like a plain dict.

Two tracker instances (two writers) work on one schema, compaction runs with zero tombstone
retention and a tiny small-file limit (the most adversarial settings), and fresh readers replace
instances at random. The two writers keep compacted-away files for the grace period (they linger,
superseded); a third party compacts with no grace period at random, deleting every superseded file
under the writers' feet.
"""

from __future__ import annotations

import uuid

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from aperio_assets.config import CompactionSettings
from aperio_assets.state import DuckDBPartitionStatusStore, ParquetPartitionStatusStore
from aperio_assets.state.keys import canonical_key
from aperio_assets.storage import LocalStorage, S3Storage
from aperio_tests.helpers import S3Server

ALTERNATES = st.sampled_from(["flights", "weather", 'odd "name"; --'])
KEYS = (
    st.fixed_dictionaries({"year": st.sampled_from(["2013", "2014"]), "month": st.sampled_from(["01", "02", "03"])})
    | st.just({})
    | st.fixed_dictionaries({"city": st.sampled_from(["São Paulo", "Zürich"])})
)
PIPELINES = st.sampled_from(["p1", "p2", "p3"])
COMPACTION = CompactionSettings(max_small_files=4, tombstone_retention_seconds=0)
NO_GRACE = CompactionSettings(max_small_files=4, tombstone_retention_seconds=0, grace_period_seconds=0)


class TrackerMachine(RuleBasedStateMachine):
    open_tracker = None  # set by each test: a callable (state id, compaction settings) -> new tracker

    def __init__(self) -> None:
        super().__init__()
        self.state_id = uuid.uuid4().hex[:12]
        self.model: dict[tuple[str, str], tuple[bool, int | None]] = {}
        self.completions: dict[str, str] = {}

    @initialize()
    def start(self) -> None:
        self.trackers = [type(self).open_tracker(self.state_id, COMPACTION) for _ in range(2)]

    # -- writes ----------------------------------------------------------------------------------
    @rule(who=st.integers(0, 1), alt=ALTERNATES, key=KEYS, rows=st.none() | st.integers(0, 10**9))
    def mark(self, who, alt, key, rows) -> None:
        self.trackers[who].mark_processed(alt, alt, key, row_count=rows)
        self.model[(alt, canonical_key(key))] = (False, rows)

    @rule(who=st.integers(0, 1), alt=ALTERNATES, key=KEYS, message=st.text(max_size=1200))
    def mark_error(self, who, alt, key, message) -> None:
        self.trackers[who].mark_processed_with_error(alt, alt, key, message)
        self.model[(alt, canonical_key(key))] = (True, None)

    @rule(who=st.integers(0, 1), alt=ALTERNATES, keys=st.lists(KEYS, min_size=1, max_size=6))
    def mark_batch(self, who, alt, keys) -> None:
        self.trackers[who].mark_many(
            [{"alternate": alt, "source_table": alt, "key_values": k, "row_count": i} for i, k in enumerate(keys)]
        )
        for i, k in enumerate(keys):
            self.model[(alt, canonical_key(k))] = (False, i)

    @rule(who=st.integers(0, 1), alt=ALTERNATES, key=KEYS)
    def invalidate(self, who, alt, key) -> None:
        self.trackers[who].invalidate(alt, key)
        self.model.pop((alt, canonical_key(key)), None)

    @rule(who=st.integers(0, 1), alt=ALTERNATES)
    def invalidate_all(self, who, alt) -> None:
        self.trackers[who].invalidate_all(alt)
        self.model = {k: v for k, v in self.model.items() if k[0] != alt}

    @rule(who=st.integers(0, 1), pipeline=PIPELINES, signature=st.sampled_from(["a", "b"]))
    def complete(self, who, pipeline, signature) -> None:
        self.trackers[who].mark_table_complete(pipeline, signature)
        self.completions[pipeline] = signature

    @rule(who=st.integers(0, 1), pipeline=PIPELINES)
    def uncomplete(self, who, pipeline) -> None:
        self.trackers[who].invalidate_table_completion(pipeline)
        self.completions.pop(pipeline, None)

    @rule(who=st.integers(0, 1))
    def clear_completions(self, who) -> None:
        self.trackers[who].clear_all_completions()
        self.completions.clear()

    @precondition(lambda self: hasattr(self.trackers[0], "compact"))
    @rule(who=st.integers(0, 1))
    def compact(self, who) -> None:
        self.trackers[who].compact()

    @precondition(lambda self: hasattr(self.trackers[0], "compact"))
    @rule()
    def compact_and_delete_at_once(self) -> None:
        type(self).open_tracker(self.state_id, NO_GRACE).compact()

    @rule(who=st.integers(0, 1))
    def fresh_reader(self, who) -> None:
        self.trackers[who] = type(self).open_tracker(self.state_id, COMPACTION)

    # -- the dict is the truth -------------------------------------------------------------------
    @invariant()
    def reads_back_like_the_dict(self) -> None:
        if not hasattr(self, "trackers"):
            return
        # Both instances are checked, one per step in turn, to keep the suite's time in bounds.
        self.checks = getattr(self, "checks", 0) + 1
        for tracker in [self.trackers[self.checks % 2]]:
            for alt in ("flights", "weather", 'odd "name"; --'):
                rows = {
                    r["incremental_key_values"]: (r["error_status"], r["row_count"]) for r in tracker.status_rows(alt)
                }
                expected = {key: value for (a, key), value in self.model.items() if a == alt}
                assert rows == expected, (alt, rows, expected)
            probe = [{"year": "2013", "month": "01"}, {}, {"city": "Zürich"}]
            assert tracker.filter_unprocessed("flights", "flights", probe) == [
                i for i, k in enumerate(probe) if ("flights", canonical_key(k)) not in self.model
            ]
            assert tracker.is_processed("weather", "weather", {}) == (("weather", "{}") in self.model)
            for pipeline in ("p1", "p2", "p3"):
                signature = self.completions.get(pipeline, "a")
                assert tracker.is_table_complete(pipeline, signature) == (pipeline in self.completions)


def _run(opener, examples: int, steps: int) -> None:
    machine = type("Machine", (TrackerMachine,), {"open_tracker": staticmethod(opener)})
    machine.TestCase.settings = settings(
        max_examples=examples, stateful_step_count=steps, deadline=None, suppress_health_check=list(HealthCheck)
    )
    machine.TestCase().runTest()


@pytest.mark.slow
def test_shared_state_on_local_disk(tmp_path) -> None:
    storage = LocalStorage(aperio_root=str(tmp_path / ".aperio"))
    _run(lambda sid, compaction: ParquetPartitionStatusStore(storage, f"s{sid}", compaction), examples=40, steps=30)


@pytest.mark.slow
def test_shared_state_on_s3(s3: S3Server, s3_bucket: str) -> None:
    storage = S3Storage(s3.settings(), aperio_root=f"s3://{s3_bucket}/.aperio")
    _run(lambda sid, compaction: ParquetPartitionStatusStore(storage, f"s{sid}", compaction), examples=10, steps=25)


@pytest.mark.slow
def test_local_duckdb_store(tmp_path) -> None:
    _run(
        lambda sid, compaction: DuckDBPartitionStatusStore(tmp_path / sid / ".partition_status.duckdb"),
        examples=6,
        steps=15,
    )

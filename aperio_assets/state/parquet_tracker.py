"""Shared mode: partition status and table completion as state tables (DESIGN §5)."""

from __future__ import annotations

from collections.abc import Sequence

from aperio_assets import layout
from aperio_assets.config import CompactionSettings
from aperio_assets.state.clock import HybridClock
from aperio_assets.state.table import CompactionResult, StateTable, TableStats, open_state_table
from aperio_assets.state.tables import PARTITION_STATUS, TABLE_COMPLETION
from aperio_assets.state.tracker import IncrementalTracker, Row
from aperio_assets.storage import StorageProvider


class ParquetPartitionStatusStore(IncrementalTracker):
    """A schema's partition status and table completion, over its two state tables. A tracker opened
    for a Lake (``open_tracker``: :meth:`over` the Lake's tables, ``state.access.schema_table``)
    shares them with the lineage, the IO manager and the catalog of that Lake; one constructed on a
    bare storage (tests, the bench) opens its own, with the clock, writer id and staleness given."""

    mode = "shared"

    def __init__(
        self,
        storage: StorageProvider,
        schema: str,
        compaction: CompactionSettings | None = None,
        *,
        clock: HybridClock | None = None,
        writer: str | None = None,
        max_staleness_seconds: float = 0.0,
    ) -> None:
        compaction = compaction or CompactionSettings()
        options = {"clock": clock, "writer": writer, "max_staleness_seconds": max_staleness_seconds}
        self.schema = schema
        self.status = open_state_table(
            storage, storage.aperio_path(schema, layout.PARTITION_STATUS), PARTITION_STATUS, compaction, **options
        )
        self.completion = open_state_table(
            storage, storage.aperio_path(schema, layout.TABLE_COMPLETION), TABLE_COMPLETION, compaction, **options
        )

    @classmethod
    def over(cls, schema: str, status: StateTable, completion: StateTable) -> ParquetPartitionStatusStore:
        """A tracker over state tables opened elsewhere (a Lake's, shared with its other users)."""
        if status.spec is not PARTITION_STATUS or completion.spec is not TABLE_COMPLETION:
            raise ValueError("a tracker needs a partition_status and a table_completion state table")
        tracker = cls.__new__(cls)
        tracker.schema, tracker.status, tracker.completion = schema, status, completion
        return tracker

    @property
    def tables(self) -> tuple[StateTable, StateTable]:
        return self.status, self.completion

    def _status_row(self, alternate: str, key: str) -> Row | None:
        return self.status.get((alternate, key))

    def _status_rows(self, alternate: str) -> list[Row]:
        return self.status.rows(where={"alternate_name": alternate})

    def _existing_keys(self, alternate: str, keys: Sequence[str]) -> set[str]:
        present = self.status.contains([(alternate, k) for k in keys])
        return {key for key, hit in zip(keys, present, strict=True) if hit}

    def _write_status(self, rows: list[Row]) -> None:
        self.status.write(upserts=rows)

    def _delete_status(self, alternate: str, keys: Sequence[str]) -> None:
        self.status.write(deletes=[(alternate, k) for k in keys])

    def _completion_row(self, pipeline: str) -> Row | None:
        return self.completion.get(pipeline)

    def _write_completion(self, row: Row) -> None:
        self.completion.write(upserts=[row])

    def _delete_completions(self, pipelines: Sequence[str] | None) -> None:
        if pipelines is None:
            pipelines = [r["pipeline_name"] for r in self.completion.rows()]
        if pipelines:
            self.completion.write(deletes=pipelines)

    def compact(self) -> list[CompactionResult]:
        return [table.compact() for table in self.tables]

    def stats(self) -> list[TableStats]:
        return [table.stats() for table in self.tables]

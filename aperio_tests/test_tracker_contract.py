"""One contract, three stores: the legacy DuckDB store, and shared state on local disk and on S3."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from aperio_tests.helpers import TrackerCase

K1 = {"year": "2013", "month": "01"}
K2 = {"year": "2013", "month": "02"}


def test_mark_and_lookup(tracker_case: TrackerCase) -> None:
    t = tracker_case.open()
    assert not t.is_processed("flights", "flights", K1)
    t.mark_processed("flights", "flights", K1, target_pattern="tables/flights/*.parquet", row_count=42, phase="load")
    assert t.is_processed("flights", "flights", K1)
    # key order and spacing do not matter: keys are canonical everywhere
    assert t.is_processed("flights", "flights", '{"month": "01", "year": "2013"}')
    assert not t.is_processed("flights", "flights", K2)
    assert not t.is_processed("weather", "weather", K1)  # another alternate
    (row,) = t.status_rows("flights")
    assert row["incremental_key_values"] == '{"month":"01","year":"2013"}'
    assert (row["source_table"], row["target_pattern"], row["row_count"], row["phase"]) == (
        "flights",
        "tables/flights/*.parquet",
        42,
        "load",
    )
    assert row["error_status"] is False and row["error_message"] is None
    assert abs(row["processed_at"] - time.time() * 1000) < 60_000


def test_a_fresh_instance_sees_everything(tracker_case: TrackerCase) -> None:
    tracker_case.open().mark_processed("flights", "flights", K1)
    assert tracker_case.open().is_processed("flights", "flights", K1)


def test_error_rows_count_as_processed_and_are_truncated(tracker_case: TrackerCase) -> None:
    t = tracker_case.open()
    t.mark_processed_with_error("flights", "flights", K1, "x" * 5000)
    assert t.is_processed("flights", "flights", K1)
    assert t.filter_unprocessed("flights", "flights", [K1, K2]) == [1]
    assert t.get_processed_key_values("flights") == [K1]
    (row,) = t.status_rows("flights")
    assert row["error_status"] is True and row["error_message"] == "x" * 1000
    # success afterwards clears the error
    t.mark_processed("flights", "flights", K1, row_count=3)
    (row,) = t.status_rows("flights")
    assert row["error_status"] is False and row["error_message"] is None and row["row_count"] == 3


def test_ttl_on_processed_at(tracker_case: TrackerCase) -> None:
    t = tracker_case.open()
    t.mark_processed("flights", "flights", K1)
    assert t.is_processed("flights", "flights", K1, ttl=3600)
    assert t.is_processed("flights", "flights", K1, ttl=timedelta(hours=1))
    time.sleep(0.05)
    assert not t.is_processed("flights", "flights", K1, ttl=0.01)


def test_mark_many_and_filter_unprocessed(tracker_case: TrackerCase) -> None:
    t = tracker_case.open()
    combos = [{"n": str(i)} for i in range(300)]
    written = t.mark_many(
        [
            {"alternate": "a", "source_table": "a", "key_values": c, "row_count": i}
            for i, c in enumerate(combos)
            if i % 3 == 0
        ]
        + [{"alternate": "a", "source_table": "a", "key_values": {"n": "1"}, "error_message": "bad file"}]
    )
    assert written == 101
    unprocessed = t.filter_unprocessed("a", "a", combos)
    assert unprocessed == [i for i in range(300) if i % 3 != 0 and i != 1]
    assert t.filter_unprocessed("a", "a", []) == []
    assert t.filter_unprocessed("b", "b", combos[:5]) == [0, 1, 2, 3, 4]
    assert len(t.get_processed_key_values("a")) == 101


def test_invalidate_and_invalidate_all(tracker_case: TrackerCase) -> None:
    t = tracker_case.open()
    for k in (K1, K2):
        t.mark_processed("flights", "flights", k)
    t.mark_processed("weather", "weather", {})
    t.invalidate("flights", {"month": "01", "year": "2013"})
    assert t.get_processed_key_values("flights") == [K2]
    assert t.invalidate_all("flights") == 1
    assert t.get_processed_key_values("flights") == []
    assert t.is_processed("weather", "weather", {})  # other alternates untouched
    t.mark_processed("flights", "flights", K1)  # a new mark after invalidation counts again
    assert tracker_case.open().get_processed_key_values("flights") == [K1]


def test_table_completion(tracker_case: TrackerCase) -> None:
    t = tracker_case.open()
    assert not t.is_table_complete("p1", "sig-a")
    t.mark_table_complete("p1", "sig-a", config_hash="h", row_count=10, source_file_watermark=99)
    t.mark_table_complete("p2", "sig-b")
    assert t.is_table_complete("p1", "sig-a") and not t.is_table_complete("p1", "sig-other")
    t.invalidate_table_completion("p1")
    assert not t.is_table_complete("p1", "sig-a") and t.is_table_complete("p2", "sig-b")
    t.clear_all_completions()
    assert not tracker_case.open().is_table_complete("p2", "sig-b")


def test_unicode_quotes_and_empty_keys(tracker_case: TrackerCase) -> None:
    t = tracker_case.open()
    odd = {"city": "São Paulo", "q": 'it\'s "quoted"; DROP TABLE x; --', "e": ""}
    t.mark_processed('täble "x"', "src", odd)
    t.mark_processed('täble "x"', "src", {})
    fresh = tracker_case.open()
    assert fresh.is_processed('täble "x"', "src", dict(reversed(list(odd.items()))))
    assert fresh.get_processed_key_values('täble "x"') == [odd, {}] or fresh.get_processed_key_values('täble "x"') == [
        {},
        odd,
    ]
    (stored,) = [r for r in fresh.status_rows('täble "x"') if r["incremental_key_values"] != "{}"]
    assert "São Paulo" in stored["incremental_key_values"]  # non-ASCII kept, not \\u-escaped


def test_bad_batch_keys_are_rejected(tracker_case: TrackerCase) -> None:
    t = tracker_case.open()
    for bad in ({"a": {"nested": "x"}}, {"a": None}, ["a"], "not json"):
        with pytest.raises(ValueError):
            t.mark_processed("a", "a", bad)

"""The worker's commit rule (streams/consumer.py): commit only the run of finished records that starts at the
partition's base, however out of order the actors finish."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.types import TP
from intervaltree import IntervalTree

from streams.consumer import BatchingConsumer

TP0 = TP("stripe.charge", 0)


def consumer(base: int | None, committed: int | None = None) -> Any:
    return SimpleNamespace(
        _acked=defaultdict(list),
        _acked_index=defaultdict(set),
        _gap=defaultdict(IntervalTree),
        _commit_bases={} if base is None else {TP0: base},
        _committed_offset=defaultdict(lambda: None, {} if committed is None else {TP0: committed}),
    )


def ack(c: Any, *offsets: int) -> None:
    for offset in offsets:
        c._acked[TP0].append(offset)
        c._acked_index[TP0].add(offset)


def new_offset(c: Any) -> int | None:
    return BatchingConsumer._new_offset(c, TP0)  # type: ignore[arg-type]


def test_nothing_is_committed_while_the_record_at_the_base_is_unfinished() -> None:
    c = consumer(500)
    ack(c, 501, 502, 503)  # 500 is in a retry; Faust's own rule would commit 504 here
    assert new_offset(c) is None
    ack(c, 500)
    assert new_offset(c) == 504
    assert new_offset(c) is None  # nothing new


def test_the_run_stops_at_the_first_unfinished_record_and_resumes_from_there() -> None:
    c = consumer(500)
    ack(c, 500, 501, 503, 504)
    assert new_offset(c) == 502
    assert c._acked[TP0] == [503, 504]
    ack(c, 502)
    assert new_offset(c) == 505


def test_offsets_the_broker_skipped_count_as_finished() -> None:
    c = consumer(500)
    c._gap[TP0].addi(502, 504)  # 502 and 503 do not exist
    ack(c, 500, 501, 504)
    assert new_offset(c) == 505


def test_a_partition_without_a_base_is_not_committed() -> None:
    c = consumer(None)  # revoked, or nothing fetched since the assignment
    ack(c, 0, 1, 2)
    assert new_offset(c) is None


def test_a_base_above_the_committed_offset_is_committed_before_anything_finishes() -> None:
    """Committed 500, the first record read 800 (the rest expired unread, reported once): 800 is committed while
    800 itself is still in a retry, so a restart or a rebalance meanwhile does not find those records gone again.
    A base at the committed offset, or with none known, commits nothing until its record finishes."""
    c = consumer(800, committed=500)
    ack(c, 801)
    assert new_offset(c) == 800
    assert new_offset(consumer(500, committed=500)) is None
    assert new_offset(consumer(800)) is None

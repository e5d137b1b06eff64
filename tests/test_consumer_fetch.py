"""The worker's fetch loop (``BatchingConsumer._drain_messages``) drops a fetch that a rebalance overtook.

It asks for the next fetch before it processes the current one, so a fetch can come back after a rebalance began
(the flow paused) or even ended (a new generation). Its records may then be another assignment's: they must not
reach the actors, and the partitions must be sought back to their committed offsets. The loop runs here over a
scripted consumer thread (the records each fetch returns, and what happens to the group while it waits).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from faust.types import TP
from intervaltree import IntervalTree

from streams.consumer import LOG_BEHIND, RECORDS_GONE, BatchingConsumer

TOPIC = "stripe.charge"
TP0, TP1 = TP(TOPIC, 0), TP(TOPIC, 1)


class _Message:
    """What the loop reads and sets on a Faust message (hashable: Faust tracks unacked ones in a set)."""

    def __init__(self, tp: TP, offset: int, generation_id: int) -> None:
        self.tp, self.offset, self.generation_id, self.tracked = tp, offset, generation_id, False


def _records(*offsets: int) -> list[Any]:
    """Fetched records as the loop reads them (offset; timestamp in ms, a second apart)."""
    return [SimpleNamespace(offset=offset, timestamp=1_700_000_000_000 + offset * 1000) for offset in offsets]


Step = Callable[["_ScriptedConsumer"], Awaitable[dict[TP, list[int]]]]


class _ScriptedConsumer(BatchingConsumer):
    """The batching consumer without Faust's consumer thread: each fetch runs the next step of ``script``."""

    def __init__(self, script: list[Step], rebalance_at: TP | None = None) -> None:  # no super(): no transport
        self.script = script
        self.rebalance_at = rebalance_at  # a rebalance begins while this partition's records are processed
        self.seeks = 0
        self.sunk: list[Any] = []
        self.something_sunk = asyncio.Event()
        self.batch_topics = frozenset({TOPIC})
        self.batch_sink = self._sink
        self._stopped = asyncio.Event()
        self.flow_active = True
        self.can_resume_flow = asyncio.Event()
        self.app = SimpleNamespace(
            should_stop=False,
            consumer_generation_id=1,
            monitor=SimpleNamespace(track_tp_end_offset=lambda tp, offset: None),
            topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
        )
        self.transport = SimpleNamespace(app=SimpleNamespace(should_stop=False))
        self._buffered_partitions: set[TP] = set()
        self._unacked_messages: set[Any] = set()  # type: ignore[assignment]
        self._read_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self._commit_bases: dict[TP, int] = {}
        self._committed_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self._acked: defaultdict[TP, list[int]] = defaultdict(list)
        self._acked_index: defaultdict[TP, set[int]] = defaultdict(set)
        self._gap: defaultdict[TP, IntervalTree] = defaultdict(IntervalTree)
        self.gaps: list[tuple[TP, int, int]] = []
        self.skipped: list[tuple[str, int]] = []
        self.skip_sink = lambda topic, count: self.skipped.append((topic, count))

    def __repr__(self) -> str:  # Faust's needs attributes this stand-in lacks
        return f"<_ScriptedConsumer seeks={self.seeks} sunk={len(self.sunk)}>"

    @property
    def should_stop(self) -> bool:
        return self._stopped.is_set()

    async def wait(self, *events: Any) -> None:
        raise AssertionError("a fetch was asked for while a rebalance had paused the flow")

    async def _wait_next_records(self, timeout: float) -> tuple[dict[TP, list[Any]], None]:  # noqa: ASYNC109 - Faust's signature
        if not self.script:
            raise AssertionError("fetched more than the script holds")
        fetched = await self.script.pop(0)(self)
        return {tp: _records(*offsets) for tp, offsets in fetched.items()}, None

    def _to_message(self, tp: TP, record: Any) -> Any:
        return _Message(tp, record.offset, self.app.consumer_generation_id)

    def highwater(self, tp: TP) -> int:
        if tp == self.rebalance_at:
            self.app.consumer_generation_id += 1
        return 100

    async def _seek_back(self) -> None:
        self.seeks += 1
        self._read_offset.clear()  # as Faust's seek: reading starts again from the committed offsets
        if not self.script:
            self._stopped.set()

    async def _add_gap(self, tp: TP, start: int, end: int) -> None:
        self.gaps.append((tp, start, end))

    async def _sink(self, batch: list[Any]) -> None:
        self.sunk.extend(batch)
        self.something_sunk.set()


def _drain(consumer: _ScriptedConsumer) -> None:
    async def run() -> None:
        fetcher = SimpleNamespace(_stopped=asyncio.Event())
        await asyncio.wait_for(consumer._drain_messages(fetcher), timeout=5)

    asyncio.run(run())


async def _rebalanced(consumer: _ScriptedConsumer) -> dict[TP, list[int]]:
    """Records fetched for generation 1 come back after a rebalance ended in generation 2."""
    await asyncio.sleep(0)
    consumer.app.consumer_generation_id += 1
    return {TP0: [0, 1, 2]}


async def _fine(consumer: _ScriptedConsumer) -> dict[TP, list[int]]:
    await asyncio.sleep(0)
    return {TP0: [0, 1, 2]}


async def _paused_after_the_previous_fetch(consumer: _ScriptedConsumer) -> dict[TP, list[int]]:
    """The fetch asked ahead comes back, after the previous fetch was processed, while a rebalance has paused the
    flow."""
    await consumer.something_sunk.wait()
    consumer.flow_active = False
    return {TP0: [3, 4]}


async def _two_partitions(consumer: _ScriptedConsumer) -> dict[TP, list[int]]:
    await asyncio.sleep(0)
    return {TP0: [0, 1], TP1: [0, 1]}


def test_a_fetch_overtaken_by_a_rebalance_is_dropped_and_the_partitions_sought_back() -> None:
    consumer = _ScriptedConsumer([_rebalanced, _fine, _paused_after_the_previous_fetch])
    _drain(consumer)
    assert consumer.seeks == 2  # after the new generation's fetch, and after the paused one
    assert [message.offset for message in consumer.sunk] == [0, 1, 2]  # only the fetch made in its generation


class _RevokedInAGap(_ScriptedConsumer):
    """A rebalance begins while the records' gap is noted (the one point collecting yields): the revoke pauses the
    flow and forgets the partition's commit base, as Faust's and ours do."""

    async def _add_gap(self, tp: TP, start: int, end: int) -> None:
        await asyncio.sleep(0)
        self.flow_active = False
        self._commit_bases.pop(tp, None)


def test_a_rebalance_that_begins_at_a_gap_stops_collecting_and_leaves_no_commit_base_behind() -> None:
    """A record after the gap would have set a new commit base in the old generation, kept by the next one: a base
    above the committed offset lets commits pass unfinished records, one below a newer commit stalls them."""
    consumer = _RevokedInAGap([])  # no fetch: one fetch's records are collected directly
    batch: list[Any] = []
    asyncio.run(consumer._collect(TP0, _records(0, 1, 5, 6), batch))
    assert [message.offset for message in batch] == [0, 1]  # collected before the rebalance: the actors drop them
    assert TP0 not in consumer._commit_bases
    assert {message.offset for message in consumer._unacked_messages} == {0, 1}
    assert consumer._read_offset[TP0] is None  # not advanced by this fetch: the rebalance's seek decides


def test_a_rebalance_that_begins_while_a_fetch_is_processed_stops_it_at_the_next_partition() -> None:
    """What was collected before goes on (the actors drop records of an old generation, streams/app.py); the
    other partitions' records are neither handed over nor tracked, and the fetch asked ahead is dropped."""
    consumer = _ScriptedConsumer([_two_partitions, _fine], rebalance_at=TP0)
    _drain(consumer)
    assert [(message.tp, message.offset) for message in consumer.sunk] == [(TP0, 0), (TP0, 1)]
    assert {message.tp for message in consumer._unacked_messages} == {TP0}
    assert consumer.seeks == 1  # the fetch asked ahead, in the old generation


def test_a_revoked_partition_forgets_its_commit_base_and_takes_a_new_one_when_it_comes_back(monkeypatch: Any) -> None:
    """A base kept past the revoke would be wrong when the partition comes back: below the offset another worker
    committed meanwhile (commits stall there, as nothing below it is fetched again), or, if that worker committed
    less, above records nobody finished. The first record fetched after the partition comes back is the base."""

    async def faust_revoke(self: Any, revoked: set[TP]) -> None:  # Faust's own revoke needs the whole app
        self.faust_revoked = set(revoked)
        self.bases_at_faust_revoke = dict(self._commit_bases)  # Faust commits what finishes: the base must be gone

    async def force_commit(self: Any, topics: set[TP]) -> bool:  # nothing of TP0 finished: nothing to commit
        assert self._new_offset(TP0) is None
        return False

    monkeypatch.setattr(BatchingConsumer.__mro__[1], "on_partitions_revoked", faust_revoke)
    monkeypatch.setattr(_ScriptedConsumer, "force_commit", force_commit, raising=False)
    consumer = _ScriptedConsumer([])
    consumer._commit_bases.update({TP0: 500, TP1: 7})
    asyncio.run(consumer.on_partitions_revoked({TP0}))
    assert consumer._commit_bases == {TP1: 7} and consumer.faust_revoked == {TP0}
    assert consumer.bases_at_faust_revoke == {TP1: 7}
    # assigned again: Faust seeks to the committed offset, another worker's 900
    consumer._read_offset[TP0] = consumer._committed_offset[TP0] = 900
    batch: list[Any] = []
    asyncio.run(consumer._collect(TP0, _records(900, 901), batch))
    assert consumer._commit_bases == {TP0: 900, TP1: 7}


def _finish(consumer: _ScriptedConsumer, offset: int) -> None:
    """An actor acks TP0's record at ``offset`` (Faust's own ``ack``)."""
    message = _Message(TP0, offset, consumer.app.consumer_generation_id)
    message.acked, message.topic = False, TOPIC  # type: ignore[attr-defined]
    assert BatchingConsumer.ack(consumer, message)  # type: ignore[arg-type]


def _revoking(monkeypatch: Any, finishing: tuple[int, ...], commit: Any) -> _ScriptedConsumer:
    """A consumer whose TP0 (base 500, committed 500) and TP1 (base 7) are revoked: Faust's revoke drops TP0's
    bookkeeping and then, while it waits, the records at ``finishing`` are acked; ``commit`` stands for
    ``force_commit``."""

    async def faust_revoke(self: Any, revoked: set[TP]) -> None:  # Faust's own, without the app
        for tp in revoked:
            self._acked.pop(tp, None), self._acked_index.pop(tp, None), self._gap.pop(tp, None)
            self._committed_offset.pop(tp, None)
        for offset in finishing:
            _finish(self, offset)

    monkeypatch.setattr(BatchingConsumer.__mro__[1], "on_partitions_revoked", faust_revoke)
    monkeypatch.setattr(_ScriptedConsumer, "force_commit", commit, raising=False)
    consumer = _ScriptedConsumer([])
    consumer._n_acked, consumer._waiting_for_ack = 0, None  # type: ignore[attr-defined]
    consumer._commit_bases.update({TP0: 500, TP1: 7})
    consumer._committed_offset[TP0] = 500
    return consumer


def _forgot_tp0(consumer: _ScriptedConsumer) -> bool:
    bookkeeping = (consumer._acked, consumer._acked_index, consumer._gap, consumer._committed_offset)
    return consumer._commit_bases == {TP1: 7} and not any(book.get(TP0) for book in bookkeeping)


def test_what_a_revoked_partition_finished_is_committed_once_its_records_in_flight_are_done(monkeypatch: Any) -> None:
    """Faust drops a revoked partition's acks before it waits for the records in flight; the acks from before and
    those that come in while it waits are committed together, by the commit rule, and then forgotten."""
    committed: list[dict[TP, int | None]] = []

    async def force_commit(self: Any, topics: set[TP]) -> bool:
        committed.append({tp: self._new_offset(tp) for tp in topics})
        return True

    consumer = _revoking(monkeypatch, (502, 504), force_commit)
    for offset in (500, 501):
        _finish(consumer, offset)
    consumer._gap[TP0].addi(503, 504)  # 503 does not exist
    asyncio.run(consumer.on_partitions_revoked({TP0}))
    assert committed == [{TP0: 505}]  # 500-501 acked before, 502 and 504 while Faust waited, 503 a gap
    assert _forgot_tp0(consumer)


def test_a_revoked_partition_whose_base_is_above_its_commit_commits_the_base(monkeypatch: Any) -> None:
    """Records gone before they were read (the base above the commit) are committed past even if nothing else
    finished, as the periodic commit does, so the next owner does not find them gone again."""
    committed: list[dict[TP, int | None]] = []

    async def force_commit(self: Any, topics: set[TP]) -> bool:
        committed.append({tp: self._new_offset(tp) for tp in topics})
        return True

    consumer = _revoking(monkeypatch, (), force_commit)
    consumer._commit_bases[TP0] = 800
    asyncio.run(consumer.on_partitions_revoked({TP0}))
    assert committed == [{TP0: 800}] and _forgot_tp0(consumer)


def test_a_revoke_commit_that_fails_or_a_revoke_while_stopping_forgets_the_partition(monkeypatch: Any) -> None:
    async def force_commit(self: Any, topics: set[TP]) -> bool:
        raise RuntimeError("changelog records not stored")

    consumer = _revoking(monkeypatch, (500,), force_commit)
    asyncio.run(consumer.on_partitions_revoked({TP0}))
    assert _forgot_tp0(consumer)

    commits: list[set[TP]] = []

    async def commit(self: Any, topics: set[TP]) -> bool:
        commits.append(topics)
        return True

    consumer = _revoking(monkeypatch, (500,), commit)
    consumer.app.should_stop = True  # Faust closed the consumer instead of waiting
    asyncio.run(consumer.on_partitions_revoked({TP0}))
    assert commits == [] and TP0 not in consumer._commit_bases


def _assigned(committed: int | None) -> _ScriptedConsumer:
    """A consumer just assigned TP0, sought to its committed offset as Faust's ``perform_seek`` leaves it."""
    consumer = _ScriptedConsumer([])
    consumer._read_offset[TP0] = committed
    consumer._committed_offset[TP0] = committed
    return consumer


def _collected(consumer: _ScriptedConsumer, *offsets: int) -> list[int]:
    batch: list[Any] = []
    asyncio.run(consumer._collect(TP0, _records(*offsets), batch))
    return [message.offset for message in batch]


def test_records_expired_before_an_assignment_read_them_are_counted_and_logged(caplog: Any) -> None:
    """Committed 500, the log now starts at 800 (retention removed the rest while the workers were down): Kafka's
    consumer starts from 800 without a word (aiokafka logs it at INFO). 300 acknowledged events are lost to
    hookstream; the operator must hear it, with what to resend."""
    consumer = _assigned(500)
    assert _collected(consumer, 800, 801) == [800, 801]
    assert consumer.skipped == [(TOPIC, 300)]
    assert consumer._commit_bases[TP0] == 800
    assert f"300 record(s) of stripe.charge[0] at offsets 500-799 {RECORDS_GONE}" in caplog.text
    assert "published before 2023-11-14T22:26:40+00:00" in caplog.text  # the first record read, at 800


def test_records_expiring_while_a_worker_falls_behind_are_counted_as_a_gap() -> None:
    """Kafka's consumer jumps to the log's new start when its position expires: a gap in the offsets read."""
    consumer = _assigned(500)
    assert _collected(consumer, 500, 501) == [500, 501]
    assert _collected(consumer, 650, 651) == [650, 651]
    assert consumer.skipped == [(TOPIC, 148)]
    assert consumer.gaps == [(TP0, 502, 649)]  # Faust's gap: counted as finished, so commits pass it


def test_records_gone_right_after_a_commit_of_everything_read_are_passed_by_the_next_commit() -> None:
    """Everything read (up to 500) finished and committed (501); records 501-650 expire before they are fetched.
    The commit after 651 finishes is 652: with Faust's own gap (from the committed offset + 1), 501 was neither
    finished nor gone, and the partition's commits stopped there until a rebalance."""
    consumer = _assigned(500)
    assert _collected(consumer, 500) == [500]
    _finish(consumer, 500)
    assert consumer._new_offset(TP0) == 501
    consumer._committed_offset[TP0] = 501
    consumer._add_gap = BatchingConsumer._add_gap.__get__(consumer)  # type: ignore[method-assign]  # the real one
    assert _collected(consumer, 651) == [651]  # 501-650 gone
    _finish(consumer, 651)
    assert consumer._new_offset(TP0) == 652


def test_an_assignment_that_reads_on_from_its_committed_offset_reports_nothing(caplog: Any) -> None:
    consumer = _assigned(500)
    assert _collected(consumer, 500, 501, 502) == [500, 501, 502]
    fresh = _assigned(None)  # a new group: the log's start, whatever it is, is where it begins
    assert _collected(fresh, 800, 801) == [800, 801]
    assert consumer.skipped == fresh.skipped == [] and consumer.gaps == fresh.gaps == []
    assert RECORDS_GONE not in caplog.text


def test_a_log_that_starts_again_below_the_committed_offset_is_read_not_dropped(caplog: Any) -> None:
    """Committed 1,000, but the partition was truncated (an unclean leader election) or recreated, and holds
    records from 0: Kafka's consumer starts again from its first record. Dropping them as already seen (Faust's
    rule) would lose every event until the log passed 1,000; they are read, and commits may go below 1,000."""
    consumer = _assigned(1_000)
    assert _collected(consumer, 0, 1, 2) == [0, 1, 2]
    assert consumer._commit_bases[TP0] == 0
    assert consumer._committed_offset[TP0] is None  # Faust commits only above the committed offset it knows
    assert consumer.skipped == []
    assert f"below offset 1000 read or committed: {LOG_BEHIND}" in caplog.text


def test_a_log_truncated_while_it_is_read_is_read_again_from_its_start(caplog: Any) -> None:
    """An unclean leader election while the worker reads: its position passes the new log's end, and Kafka's
    consumer starts again from the first record. What was finished of the old log no longer counts for commits."""
    consumer = _assigned(1_000)
    assert _collected(consumer, 1_000, 1_001, 1_002) == [1_000, 1_001, 1_002]
    consumer._acked[TP0] = [1_000, 1_001]
    consumer._acked_index[TP0] = {1_000, 1_001}
    consumer._gap[TP0].addi(1_003, 1_010)  # a gap of the old log would count the new log's offsets as finished
    assert _collected(consumer, 5, 6) == [5, 6]
    assert consumer._commit_bases[TP0] == 5 and consumer._committed_offset[TP0] is None
    assert not consumer._acked[TP0] and not consumer._acked_index[TP0] and not consumer._gap[TP0]
    assert consumer.skipped == []
    assert "starts again at offset 5, below offset 1002 read or committed" in caplog.text

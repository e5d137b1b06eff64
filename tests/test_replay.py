"""``hookstream replay``'s parts: the headers it sends back, how it reads the dead-letter topic, and a cluster
without that topic (the one test here with a broker; tests/test_worker.py replays for real)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition

from ops.replay import (
    GroupJoinTimeout,
    Replayed,
    ReplayStalled,
    _dead_letters,
    pending,
    replay,
    replay_headers,
    run_replay,
)
from ops.settings import Settings
from streams.dead_letters import dead_letter_headers
from tests.support import BrokerInfo, unique


def test_a_dead_letter_goes_back_with_its_own_headers_and_one_fresh_replayed_at() -> None:
    """Replayed, failed again and replayed once more: the second replay's time replaces the first's (the processor
    reads the first replayed-at it finds, and the end-to-end time would start at the older replay)."""
    delivered = [("event-id", b"evt_1"), ("event-type", b"invoice.paid"), ("received-at", b"1700000000000")]
    first_replay = [*delivered, ("replayed-at", b"1700000100000")]
    letter = dead_letter_headers(first_replay, RuntimeError("still failing"), 3, "stripe.invoice", 2, 41)
    before = time.time_ns() // 1_000_000
    sent = replay_headers(letter)
    after = time.time_ns() // 1_000_000
    assert sent[:-1] == delivered
    name, value = sent[-1]
    assert name == "replayed-at" and before <= int(value) <= after


class _Joining:
    """A consumer whose group join takes ``join_polls`` polls (assigned nothing meanwhile), then has ``records``;
    after ``lost_after`` polls with partitions, another member takes them. Its high watermark is ``end`` (None:
    none fetched yet) until ``later`` more records arrive with the next poll."""

    def __init__(
        self,
        join_polls: int,
        records: list[Any],
        lost_after: int | None = None,
        end: int | None = None,
        later: list[Any] | None = None,
        tp: Any = "tp",
    ) -> None:
        self.join_polls, self.records, self.lost_after = join_polls, records, lost_after
        self.end, self.later, self.paused, self.tp = end, later or [], False, tp
        self.read_to = 0  # the position: after the last record returned

    def highwater(self, tp: str) -> int | None:
        return None if self.join_polls else self.end

    async def position(self, tp: str) -> int:
        return self.read_to

    def pause(self, tp: str) -> None:
        self.paused = True

    async def getmany(self, timeout_ms: int, max_records: int | None = None) -> dict[Any, list[Any]]:
        await asyncio.sleep(0.02)
        if self.join_polls:
            self.join_polls -= 1
            return {}
        if self.lost_after is not None:
            self.lost_after -= 1
        if self.paused:
            return {}
        records, self.records = self.records, []
        if not records and self.later:  # dead-lettered after the run began: the end moves on
            records, self.later = self.later, []
            self.end = records[-1].offset + 1
        if records:
            self.read_to = records[-1].offset + 1
        return {self.tp: records} if records else {}

    def assignment(self) -> set[Any]:
        return set() if self.join_polls or (self.lost_after is not None and self.lost_after < 0) else {self.tp}


def _letters(offsets: range) -> list[Any]:
    """Dead letters at ``offsets``, each of its own event."""
    return [SimpleNamespace(offset=offset, headers=[("event-id", b"evt_%d" % offset)]) for offset in offsets]


def _records(consumer: _Joining, stall: float, join: float = 5.0) -> list[Any]:
    async def run() -> list[Any]:
        return [record async for _, record, _ in _dead_letters(consumer, None, stall, join)]  # type: ignore[arg-type]

    return asyncio.run(run())


def test_the_group_join_is_waited_through() -> None:
    """On Kafka a group nobody is in is joined after group.initial.rebalance.delay.ms (3 s): counted against the
    run, the replay stopped before its first fetch and replayed nothing."""
    letter = SimpleNamespace(offset=0, headers=[("event-id", b"evt_1")])
    assert _records(_Joining(join_polls=10, records=[letter], end=1), stall=0.1) == [letter]  # 0.2 s joining


def test_a_run_ends_at_the_ends_not_at_a_pause_in_the_records() -> None:
    """Re-publishing a batch can take longer than the old idle timeout (acks=all, thousands of dead letters), and
    fetches may fail for seconds (a leader moving): the next empty poll ended the run as caught up, exit 0, with
    dead letters left behind. A run ends once its partitions are read to their ends; one that stays short of them
    fails (exit 2)."""

    class Pausing(_Joining):
        """Its second batch comes after one empty poll."""

        waited = False

        async def getmany(self, timeout_ms: int, max_records: int | None = None) -> dict[Any, list[Any]]:
            if not self.records and self.later and not self.waited:
                self.waited = True
                await asyncio.sleep(0.02)
                return {}
            return await super().getmany(timeout_ms, max_records)

    first, second = _letters(range(3)), _letters(range(3, 6))
    consumer = Pausing(join_polls=1, records=first, end=6, later=second)  # the end as first fetched: 6

    async def run() -> list[Any]:
        read = []
        async for _, record, _ in _dead_letters(consumer, None, 0.3, 5.0):  # type: ignore[arg-type]
            read.append(record)
            await asyncio.sleep(0.15)  # sending it: 0.45 s for the first batch, over the old 0.3 s idle timeout
        return read

    assert asyncio.run(run()) == [*first, *second]
    # fetches that bring nothing while the partition is short of its end: a stall, not a finished run
    stuck = _Joining(join_polls=1, records=first, end=6, tp=TopicPartition("stripe.dlq", 0))
    with pytest.raises(ReplayStalled, match=r"nothing read for 0\.3 s short of .* \(stripe\.dlq\[0\]@6\)"):
        _records(stuck, stall=0.3)


def test_a_join_that_never_assigns_a_partition_is_an_error_not_an_empty_replay() -> None:
    with pytest.raises(GroupJoinTimeout, match="another `hookstream replay` may be running"):
        _records(_Joining(join_polls=1_000, records=[]), stall=0.1, join=0.3)


def test_partitions_taken_by_another_replay_end_this_one_normally_with_what_it_read() -> None:
    """Past the join, an empty assignment is a rebalance that gave the partitions to another member (a second
    replay): this one stops as caught up, its count printed, rather than failing on the join deadline."""
    letter = SimpleNamespace(offset=0, headers=[("event-id", b"evt_1")])
    consumer = _Joining(join_polls=2, records=[letter], lost_after=3)
    assert _records(consumer, stall=10.0, join=5.0) == [letter]  # a deadline only: a paused process must not hit it


def test_a_replay_stops_at_the_end_each_partition_had_when_it_first_fetched_it() -> None:
    """A replayed event that fails again comes back as a new dead letter within a second: taken too, it was
    re-published again, for as long as it kept failing, and the replay never caught up. It is left to the next run
    (not committed)."""
    letters = _letters(range(3))
    again = [SimpleNamespace(offset=3, headers=[("event-id", b"evt_0")])]  # evt_0 failed once more
    consumer = _Joining(join_polls=1, records=letters, end=3, later=again)
    assert _records(consumer, stall=0.3) == letters
    assert consumer.paused and consumer.later == []  # it was read, and stopped the partition
    # in one fetch with the ones before it
    consumer = _Joining(join_polls=1, records=[*letters, *again], end=3)
    assert _records(consumer, stall=0.3) == letters


class _Group(_Joining):
    """A replay's consumer over one dead-letter partition; its commits refused when ``refuse`` (another replay
    joined)."""

    refuse = False

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def topics(self) -> set[str]:
        return {"stripe.dlq"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def subscribe(self, topics: list[str]) -> None: ...

    async def commit(self, offsets: dict[Any, int]) -> None:
        from aiokafka.errors import CommitFailedError

        if self.refuse:
            raise CommitFailedError("the group has already rebalanced")


class _Producer:
    """What the replay sends: (topic, key, partition) each."""

    sent: list[tuple[str, bytes | None, int | None]]

    def __init__(self, **options: Any) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send_and_wait(
        self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None, headers: Any = None
    ) -> None:
        self.sent.append((topic, key, partition))


def _replayed(monkeypatch: pytest.MonkeyPatch, consumer: _Group) -> tuple[Replayed, list[tuple[Any, ...]]]:
    sent: list[tuple[str, bytes | None, int | None]] = []
    monkeypatch.setattr(_Producer, "sent", sent, raising=False)
    monkeypatch.setattr("ops.replay._consumer", lambda settings: consumer)
    monkeypatch.setattr("ops.replay.AIOKafkaProducer", _Producer)
    return asyncio.run(replay(Settings.from_env({}), stall_timeout=0.3)), sent


def test_a_commit_refused_because_another_replay_joined_ends_this_one_with_what_it_did(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The dead letter it had just re-published goes uncommitted, so the replay that took its partition sends it
    again (workers drop the copy of an applied event); this one stops as caught up (it used to exit 2, as if
    Kafka had failed it)."""
    letters = [
        SimpleNamespace(offset=offset, key=b"ch_1", value=b"{}", headers=[("source-topic", b"stripe.charge")])
        for offset in range(3)
    ]
    consumer = _Group(join_polls=0, records=letters, end=3, tp=TopicPartition("stripe.dlq", 0))
    consumer.refuse = True
    done, sent = _replayed(monkeypatch, consumer)
    assert done == Replayed(1, 0, 0) and len(sent) == 1


def test_a_dead_letter_without_a_key_goes_back_to_its_partition(monkeypatch: pytest.MonkeyPatch) -> None:
    """A record that bypassed the gateway has no key (the worker keys it by its object): sent without one, the
    producer picked a partition at random, away from its object's state and order. One with a key goes by it."""
    source = [("source-topic", b"stripe.charge"), ("source-partition", b"5"), ("source-offset", b"17")]
    letters = [
        SimpleNamespace(offset=0, key=None, value=b"{}", headers=source),
        SimpleNamespace(offset=1, key=b"ch_1", value=b"{}", headers=source),
    ]
    consumer = _Group(join_polls=0, records=letters, end=2, tp=TopicPartition("stripe.dlq", 0))
    done, sent = _replayed(monkeypatch, consumer)
    assert done == Replayed(2, 0, 0)
    assert sent == [("stripe.charge", None, 5), ("stripe.charge", b"ch_1", None)]


@pytest.mark.integration
def test_without_a_dead_letter_topic_there_is_nothing_to_replay_or_list(broker: BrokerInfo) -> None:
    """No worker wrote one yet: nothing to join for. (Assigned no partition, the listing waited out the join
    deadline and failed.)"""
    app_id, prefix = unique("nodlq")
    settings = Settings.from_env(broker.app_env(app_id, prefix))
    shown: list[str] = []
    assert asyncio.run(pending(settings, shown.append)) == 0 and shown == []
    assert asyncio.run(replay(settings)) == Replayed(0, 0, 0)


def test_an_empty_discard_is_refused_before_kafka_is_asked(capsys: pytest.CaptureFixture[str]) -> None:
    """``--discard "$ID"`` with ``$ID`` unset: it would match no dead letter, after every other was re-published."""
    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"})  # nothing listens: not asked
    assert run_replay(settings, None, discard=["evt_1", ""]) == 2
    assert "--discard needs an event id or a position" in capsys.readouterr().err

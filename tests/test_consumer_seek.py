"""Where the worker's consumer resumes a partition after dropping fetched records (streams/consumer.py): at the
committed offset, or at the beginning of a partition that has none; and not before the seek after a rebalance."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from streams.consumer import BatchingConsumer
from tests.support import BrokerInfo, charge, produce, unique


def test_a_partition_without_a_commit_goes_back_to_its_beginning(broker: BrokerInfo) -> None:
    _, prefix = unique("seek")
    records = [charge(prefix, f"ch_seek_{i}", 1, 1_700_000_000 + i) for i in range(12)]
    produce(broker.bootstrap_servers, records)
    topic = records[0].topic

    async def run() -> tuple[dict[TopicPartition, int], dict[TopicPartition, int], dict[TopicPartition, int]]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=broker.bootstrap_servers,
            group_id=f"seek-{uuid.uuid4().hex[:8]}",  # no commits
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            consumer.assign(partitions)
            read = 0
            for _ in range(50):  # every record read, none committed: as a fetch dropped at a rebalance leaves them
                read += sum(len(batch) for batch in (await consumer.getmany(timeout_ms=500)).values())
                if read == len(records):
                    break
            read_to = {tp: await consumer.position(tp) for tp in partitions}
            await consumer.seek_to_committed()  # aiokafka's own: partitions without a commit stay where they are
            after_plain = {tp: await consumer.position(tp) for tp in partitions}
            worker_consumer = BatchingConsumer.__new__(BatchingConsumer)  # only its seek, over this consumer
            worker_consumer.batch_topics = frozenset({topic})
            worker_consumer._thread = SimpleNamespace(  # type: ignore[attr-defined]
                seek_to_committed=consumer.seek_to_committed, seek_to_beginning=consumer.seek_to_beginning
            )
            committed = await worker_consumer.seek_to_committed()
            assert set(committed) == set(partitions) and not any(committed.values())
            after_ours = {tp: await consumer.position(tp) for tp in partitions}
            return read_to, after_plain, after_ours
        finally:
            await consumer.stop()

    read_to, after_plain, after_ours = asyncio.run(run())
    assert sum(read_to.values()) == len(records)
    assert after_plain == read_to  # what would skip them: the next records read are past them
    assert after_ours == dict.fromkeys(read_to, 0)  # every record is read again


EVENT_TP, REVOKED_TP, CHANGELOG_TP = TP("stripe.charge", 0), TP("stripe.charge", 1), TP("app-objects-changelog", 0)


def _resumed(monkeypatch: Any, seek: Any) -> BatchingConsumer:
    """A consumer after a rebalance: Faust resumed an event partition, one revoked since, and a changelog partition;
    its own seek is ``seek``."""
    monkeypatch.setattr(BatchingConsumer.__mro__[1], "perform_seek", seek)
    consumer = BatchingConsumer.__new__(BatchingConsumer)
    consumer.batch_topics = frozenset({"stripe.charge"})
    consumer.app = SimpleNamespace(consumer_generation_id=5)  # type: ignore[assignment]
    consumer._active_partitions, consumer._paused_partitions = set(), {EVENT_TP, REVOKED_TP, CHANGELOG_TP}
    consumer._unsought = {}
    consumer.assignment = lambda: {EVENT_TP, CHANGELOG_TP}  # type: ignore[method-assign]
    consumer.resume_partitions({EVENT_TP, REVOKED_TP, CHANGELOG_TP})
    return consumer


def test_event_partitions_resumed_after_a_rebalance_wait_for_their_seek(monkeypatch: Any) -> None:
    """Faust resumes the stream partitions, then seeks them to their committed offsets: a fetch in between read from
    where the consumer stood. Event-topic partitions are fetched only once the seek is done; others (a changelog in
    recovery) at once. One revoked meanwhile is not resumed."""
    active_at_seek: list[set[TP]] = []

    async def faust_seek(self: Any) -> None:  # Faust's own seeks to the committed offsets through the consumer thread
        active_at_seek.append(set(self._get_active_partitions()))

    consumer = _resumed(monkeypatch, faust_seek)
    assert consumer._get_active_partitions() == {CHANGELOG_TP}
    asyncio.run(consumer._seek_back())  # the fetch loop's, after dropping a fetch: not the one they wait for
    assert consumer._get_active_partitions() == {CHANGELOG_TP}
    asyncio.run(consumer.perform_seek())
    assert active_at_seek == [{CHANGELOG_TP}, {CHANGELOG_TP}]
    assert consumer._get_active_partitions() == {EVENT_TP, CHANGELOG_TP} and EVENT_TP not in consumer._paused_partitions


def test_a_seek_that_fails_resumes_them_but_not_into_the_next_rebalance(monkeypatch: Any) -> None:
    """A failed or timed-out seek resumes them as Faust did (its recovery goes on without it). A rebalance that
    cancels the seek has paused them for its own recovery, which seeks them: they stay held until then."""

    async def failing_seek(self: Any) -> None:
        raise TimeoutError("no answer to OffsetFetch")

    consumer = _resumed(monkeypatch, failing_seek)
    with pytest.raises(TimeoutError):
        asyncio.run(consumer.perform_seek())
    assert consumer._get_active_partitions() == {EVENT_TP, CHANGELOG_TP}

    async def seek_overtaken(self: Any) -> None:  # the next assignment came in, and its recovery cancels this one
        self.app.consumer_generation_id += 1
        raise asyncio.CancelledError

    consumer = _resumed(monkeypatch, seek_overtaken)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(consumer.perform_seek())
    assert consumer._get_active_partitions() == {CHANGELOG_TP} and not consumer._unsought

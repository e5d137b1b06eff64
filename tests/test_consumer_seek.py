"""Where the worker's consumer resumes a partition after dropping fetched records (streams/consumer.py): at the
committed offset, or at the beginning of a partition that has none."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace

from aiokafka import AIOKafkaConsumer, TopicPartition

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

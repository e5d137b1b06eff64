"""Baseline: the raw consume loop. A plain aiokafka consumer reading every partition of a topic from the
beginning with ``getmany``, doing nothing with the records: the most any consumer in Python gets from this broker.

Timed from assignment (after the seek) to the last expected record, like a worker from readiness.

    python -m bench.raw_consume --bootstrap HOST:PORT --topic T --expected N
"""

from __future__ import annotations

import argparse
import time

import uvloop
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import print_result


async def consume(bootstrap: str, topic: str, expected: int, max_seconds: float) -> dict[str, float]:
    """Read ``expected`` records of ``topic``; return the count, elapsed seconds and CPU seconds."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        consumer.assign([TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())])
        await consumer.seek_to_beginning()
        cpu0, start = time.process_time(), time.monotonic()
        count = 0
        while count < expected and time.monotonic() - start < max_seconds:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batch.values():
                count += len(records)
        elapsed = time.monotonic() - start
        return {"count": count, "elapsed_s": elapsed, "cpu_s": time.process_time() - cpu0}
    finally:
        await consumer.stop()


def main() -> None:
    """Parse arguments, consume, print the RESULT line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--expected", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    print_result(uvloop.run(consume(args.bootstrap, args.topic, args.expected, args.timeout)))


if __name__ == "__main__":
    main()

"""Baseline: sequential per partition, for I/O-bound handlers. One aiokafka consumer over every partition; each
partition's events are awaited one at a time (decode, the same 5 ms of simulated I/O, keep the object's last
seq), partitions concurrently. Per-object order holds by construction; it is checked anyway.

    python -m bench.sequential --bootstrap HOST:PORT --topic T --expected N [--io-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import uvloop
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from bench.common import print_result


class Partitions:
    """A task per partition awaiting its events in order; counts events and per-object order violations."""

    def __init__(self, io_seconds: float) -> None:
        self.io_seconds = io_seconds
        self.queues: dict[TopicPartition, asyncio.Queue[ConsumerRecord[bytes, bytes]]] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.last_seq: dict[str, int] = {}
        self.done = 0
        self.violations = 0

    def put(self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Queue records for their partition's task (started on first use)."""
        queue = self.queues.get(tp)
        if queue is None:
            queue = self.queues[tp] = asyncio.Queue()
            self.tasks.append(asyncio.create_task(self._run(queue)))
        for record in records:
            queue.put_nowait(record)

    async def _run(self, queue: asyncio.Queue[ConsumerRecord[bytes, bytes]]) -> None:
        while True:
            record = await queue.get()
            await self.handle(record.value or b"{}")

    async def handle(self, value: bytes) -> None:
        """The I/O-bound handler: decode, await the simulated I/O, check and keep the object's seq."""
        event = json.loads(value)
        obj = event["data"]["object"]
        await asyncio.sleep(self.io_seconds)
        seq = int(obj["metadata"]["seq"])
        if seq != self.last_seq.get(obj["id"], -1) + 1:
            self.violations += 1
        self.last_seq[obj["id"]] = seq
        self.done += 1


async def run(bootstrap: str, topic: str, expected: int, io_seconds: float, max_seconds: float) -> dict[str, float]:
    """Handle ``expected`` events; return counts, elapsed and CPU seconds."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    partitions = Partitions(io_seconds)
    try:
        await consumer.topics()
        consumer.assign([TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())])
        await consumer.seek_to_beginning()
        cpu0, start = time.process_time(), time.monotonic()
        fetched = 0
        while partitions.done < expected and time.monotonic() - start < max_seconds:
            if fetched < expected:
                batch = await consumer.getmany(timeout_ms=100, max_records=10_000)
                for tp, records in batch.items():
                    partitions.put(tp, records)
                    fetched += len(records)
            else:
                await asyncio.sleep(0.005)
        elapsed = time.monotonic() - start
        return {
            "count": partitions.done,
            "elapsed_s": elapsed,
            "cpu_s": time.process_time() - cpu0,
            "order_violations": partitions.violations,
            "objects": len(partitions.last_seq),
        }
    finally:
        for task in partitions.tasks:
            task.cancel()
        await consumer.stop()


def main() -> None:
    """Parse arguments, run, print the RESULT line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--expected", type=int, required=True)
    parser.add_argument("--io-ms", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    print_result(uvloop.run(run(args.bootstrap, args.topic, args.expected, args.io_ms / 1000, args.timeout)))


if __name__ == "__main__":
    main()

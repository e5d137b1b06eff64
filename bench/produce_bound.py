"""Reference: the durable bound. The gateway's producer (librdkafka with the settings the benchmark gives the
gateway: its defaults, idempotence off as the embedded broker needs; the same record and key, so one partition,
as wrk's requests) with as many records in flight as wrk has connections, each re-sent as soon as the broker
acknowledges it, and no HTTP at all.

A gateway that answers only after the broker's acknowledgement has at most one record in flight per connection,
so on these connections no such gateway can carry more requests per second than this loop acknowledges records.

    python -m bench.produce_bound --bootstrap HOST:PORT --topic-prefix P --in-flight 64 --seconds 10
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import confluent_kafka

from bench.common import gateway_body, print_result
from gateway.envelope import to_record
from gateway.rdkafka import librdkafka_config
from ops.settings import Settings


class ClosedLoop:
    """``in_flight`` records always outstanding: each acknowledgement sends the next one."""

    def __init__(self, producer: confluent_kafka.Producer, record: Any, in_flight: int) -> None:
        self._producer = producer
        self._record = record
        self._in_flight = in_flight
        self._running = False
        self.window: tuple[float, float] = (0.0, 0.0)
        self.latencies: list[float] = []
        self.errors = 0

    def run(self, warmup: float, seconds: float) -> None:
        """Keep the records going for ``warmup + seconds``; latencies are kept for acknowledgements in the window."""
        self._running = True
        start = time.perf_counter()
        self.window = (start + warmup, start + warmup + seconds)
        for _ in range(self._in_flight):
            self._send()
        while time.perf_counter() < self.window[1]:
            self._producer.poll(0.05)
        self._running = False
        self._producer.flush(30)

    def _send(self) -> None:
        sent = time.perf_counter()
        record = self._record
        self._producer.produce(
            record.topic,
            record.value,
            record.key,
            headers=record.headers,
            on_delivery=lambda err, _msg: self._delivered(err, sent),
        )

    def _delivered(self, error: Any, sent: float) -> None:
        now = time.perf_counter()
        if error is not None:
            self.errors += 1
        elif self.window[0] <= now < self.window[1]:
            self.latencies.append(now - sent)
        if self._running:
            self._send()


def main() -> None:
    """Parse arguments, run the loop, print the RESULT line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic-prefix", required=True)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    args = parser.parse_args()
    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": args.bootstrap, "KAFKA_ENABLE_IDEMPOTENCE": "false"})
    producer = confluent_kafka.Producer(librdkafka_config(settings))
    producer.list_topics(timeout=30)
    record = to_record(gateway_body(), args.topic_prefix, time.time_ns() // 1_000_000)
    loop = ClosedLoop(producer, record, args.in_flight)
    cpu0 = time.process_time()
    loop.run(args.warmup, args.seconds)
    latencies = sorted(loop.latencies)
    print_result(
        {
            "records_per_s": len(latencies) / args.seconds,
            "p50_ms": 1000 * statistics.median(latencies) if latencies else 0.0,
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else 0.0,
            "errors": loop.errors,
            "in_flight": args.in_flight,
            "cpu_s": round(time.process_time() - cpu0, 2),
        }
    )


if __name__ == "__main__":
    main()

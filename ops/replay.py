"""``hookstream replay``: send dead letters back to the topics they came from.

Reads the dead-letter topic as consumer group ``<app id>-replay`` and commits after each re-publish is
acknowledged, so every dead letter is replayed once however often the command runs. A replayed event keeps its
key, value and original headers; workers apply it (or count it a duplicate if it was applied meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

from ops.kafka import client_options
from ops.settings import Settings
from streams.dead_letters import VALUE_OMITTED, header, original_headers

log = logging.getLogger(__name__)


async def replay(settings: Settings, limit: int | None = None, idle_timeout: float = 3.0) -> tuple[int, int]:
    """Re-publish up to ``limit`` dead letters; return (replayed, skipped: no source-topic or no value)."""
    options = client_options(settings)
    consumer = AIOKafkaConsumer(
        settings.dlq_topic,
        **options,
        group_id=f"{settings.worker_app_id}-replay",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=int(settings.worker_session_timeout * 1000),
        rebalance_timeout_ms=int(settings.worker_rebalance_timeout * 1000),
    )
    producer = AIOKafkaProducer(**options, acks="all", enable_idempotence=settings.kafka_enable_idempotence)
    replayed = skipped = 0
    try:
        await producer.start()
        await consumer.start()
        idle_since = time.monotonic()
        while limit is None or replayed + skipped < limit:
            batch = await consumer.getmany(timeout_ms=500, max_records=limit and limit - replayed - skipped)
            if not batch:
                if time.monotonic() - idle_since > idle_timeout:  # caught up
                    break
                continue
            idle_since = time.monotonic()
            for tp, records in batch.items():
                for record in records:
                    headers = [(k, bytes(v)) for k, v in record.headers]
                    source = header(headers, "source-topic")
                    omitted = header(headers, VALUE_OMITTED)
                    if not source:
                        log.warning("dead letter %s@%d has no source-topic header: skipped", tp, record.offset)
                        skipped += 1
                    elif omitted:
                        log.warning(
                            "dead letter %s@%d was stored without its %s-byte value (over the size limit): skipped; "
                            "the record is at %s[%s]@%s",
                            tp,
                            record.offset,
                            omitted.decode(),
                            source.decode(),
                            (header(headers, "source-partition") or b"?").decode(),
                            (header(headers, "source-offset") or b"?").decode(),
                        )
                        skipped += 1
                    else:
                        await producer.send_and_wait(
                            source.decode(), record.value, key=record.key, headers=original_headers(headers)
                        )
                        replayed += 1
                    await consumer.commit({TopicPartition(tp.topic, tp.partition): record.offset + 1})
    finally:
        await consumer.stop()
        await producer.stop()
    return replayed, skipped


def run_replay(settings: Settings, limit: int | None) -> int:
    """The command: 0 when every dead letter was replayed or skipped, 2 when Kafka failed it (commits so far hold)."""
    try:
        replayed, skipped = asyncio.run(replay(settings, limit))
    except KafkaError as exc:
        print(f"hookstream replay: Kafka at {settings.kafka_bootstrap_servers}: {exc!r}", file=sys.stderr)
        if settings.kafka_enable_idempotence and not isinstance(exc, KafkaConnectionError):
            print(
                "hookstream replay: the embedded development broker takes no idempotent producer: against it, set "
                "KAFKA_ENABLE_IDEMPOTENCE=false (hookstream dev prints what to export)",
                file=sys.stderr,
            )
        return 2
    print(f"replayed {replayed} dead letter(s) from {settings.dlq_topic}" + (f", skipped {skipped}" if skipped else ""))
    return 0

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
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, UnknownError

from ops.kafka import client_options
from ops.settings import Settings
from streams.dead_letters import VALUE_OMITTED, header, original_headers

log = logging.getLogger(__name__)


async def replay(
    settings: Settings,
    limit: int | None = None,
    idle_timeout: float = 3.0,
    listing: Callable[[str], None] | None = None,
) -> tuple[int, int]:
    """Re-publish up to ``limit`` dead letters; return (replayed, skipped: no source-topic or no value).

    With ``listing``, describe each dead letter a replay would take to it instead: nothing is sent or committed
    (and no producer is needed), and the group is not joined: its partitions are read from the group's commits
    beside it, so a replay running meanwhile keeps all of them (a join would take half away, and it would stop
    early, as if caught up)."""
    options = client_options(settings)
    consumer = AIOKafkaConsumer(
        **options,
        group_id=f"{settings.worker_app_id}-replay",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=int(settings.worker_session_timeout * 1000),
        rebalance_timeout_ms=int(settings.worker_rebalance_timeout * 1000),
    )
    producer = None
    if listing is None:
        producer = AIOKafkaProducer(**options, acks="all", enable_idempotence=settings.kafka_enable_idempotence)
    replayed = skipped = 0
    try:
        if producer is not None:
            await producer.start()
        await consumer.start()
        if listing is None:
            consumer.subscribe([settings.dlq_topic])
        else:  # assigned, not subscribed: positions start at the group's committed offsets (else the beginning)
            await consumer.topics()  # the topic's partitions, without creating it
            partitions = consumer.partitions_for_topic(settings.dlq_topic) or set()
            consumer.assign([TopicPartition(settings.dlq_topic, partition) for partition in sorted(partitions)])
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
                    if listing is not None:
                        listing(describe(f"{tp.topic}[{tp.partition}]@{record.offset}", headers))
                        replayed += 1
                        continue
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
                        assert producer is not None
                        await producer.send_and_wait(
                            source.decode(), record.value, key=record.key, headers=original_headers(headers)
                        )
                        replayed += 1
                    await consumer.commit({TopicPartition(tp.topic, tp.partition): record.offset + 1})
    finally:
        await consumer.stop()
        if producer is not None:
            await producer.stop()
    return replayed, skipped


def describe(where: str, headers: list[tuple[str, bytes]]) -> str:
    """One dead letter in two lines: where it is, its event and source; why it failed (the error's message)."""

    def get(name: str) -> str:
        return (header(headers, name) or b"?").decode(errors="replace")

    source = f"{get('source-topic')}[{get('source-partition')}]@{get('source-offset')}"
    omitted = " (stored without its value)" if header(headers, VALUE_OMITTED) else ""
    return (
        f"{where}  {get('event-id')} ({get('event-type')}) from {source}, {get('attempts')} attempt(s){omitted}\n"
        f"    {get('error-type')}: {get('error-message')}"
    )


def run_replay(settings: Settings, limit: int | None, list_only: bool = False) -> int:
    """The command: 0 when every dead letter was replayed or skipped, 2 when Kafka failed it (commits so far hold)."""
    try:
        replayed, skipped = asyncio.run(replay(settings, limit, listing=print if list_only else None))
    except KafkaError as exc:
        print(f"hookstream replay: Kafka at {settings.kafka_bootstrap_servers}: {exc!r}", file=sys.stderr)
        if settings.kafka_enable_idempotence and isinstance(exc, UnknownError):  # how the embedded broker refuses
            print(
                "hookstream replay: the embedded development broker takes no idempotent producer: against it, set "
                "KAFKA_ENABLE_IDEMPOTENCE=false (hookstream dev prints what to export)",
                file=sys.stderr,
            )
        return 2
    if list_only:
        print(f"{replayed} dead letter(s) in {settings.dlq_topic} not replayed yet")
        return 0
    print(f"replayed {replayed} dead letter(s) from {settings.dlq_topic}" + (f", skipped {skipped}" if skipped else ""))
    return 0

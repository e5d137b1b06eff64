"""``hookstream replay``: send dead letters back to the topics they came from.

Reads the dead-letter topic as consumer group ``<app id>-replay`` and commits after each re-publish is
acknowledged, so every dead letter is replayed once however often the command runs. A run takes the dead letters
that were there when it began: one that a replayed event writes by failing again is left to the next run (a
replay that took those, while the event kept failing, never ended). A replayed event keeps its
key, value and original headers, plus ``replayed-at`` (its end-to-end time starts there). Workers judge it like
any delivery: applied, or counted a duplicate (applied meanwhile) or stale (its object applied a newer event
meanwhile, whose snapshot already holds what it would set; only a handler registered with ``include_stale=True``
runs then).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Collection
from typing import NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError, UnknownError

from ops.kafka import client_options, record_position
from ops.settings import Settings
from streams.dead_letters import (
    REPLAYED_AT,
    VALUE_OMITTED,
    header,
    header_pairs,
    original_headers,
    source_position,
)

log = logging.getLogger(__name__)


class Replayed(NamedTuple):
    replayed: int
    skipped: int  # no source-topic, or stored without its value
    discarded: int
    found: frozenset[str] = frozenset()  # what was asked to be discarded (event ids, positions), and found

    @property
    def read(self) -> int:
        """Dead letters read (at most the limit)."""
        return self.replayed + self.skipped + self.discarded


async def replay(
    settings: Settings, limit: int | None = None, stall_timeout: float = 30.0, discard: Collection[str] = ()
) -> Replayed:
    """Re-publish up to ``limit`` dead letters, except those of the events in ``discard`` (event ids, or dead
    letters' positions ``topic[partition]@offset`` as ``--list`` shows them: a record that bypassed the gateway may
    have no event id): those are passed over and committed like the others, so that no later replay takes them (an
    event that can never apply, once the team has decided so)."""
    consumer = _consumer(settings)
    producer = AIOKafkaProducer(
        **client_options(settings),
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        # a dead letter as large as the brokers take
        max_request_size=settings.kafka_max_message_bytes,
    )
    replayed = skipped = discarded = 0
    found: set[str] = set()
    try:
        await producer.start()
        await consumer.start()
        if not await _dead_letter_partitions(consumer, settings):  # nothing to join for
            return Replayed(0, 0, 0)
        consumer.subscribe([settings.dlq_topic])
        async for tp, record, headers in _dead_letters(consumer, limit, stall_timeout):
            source = header(headers, "source-topic")
            omitted = header(headers, VALUE_OMITTED)
            event_id = (header(headers, "event-id") or b"").decode(errors="replace")
            where = record_position(tp.topic, tp.partition, record.offset)
            asked = {name for name in (event_id, where) if name and name in discard}
            if asked:
                log.warning("dead letter %s of event %s discarded, as asked", where, event_id or "(no id)")
                discarded += 1
                found |= asked
            elif not source:
                log.warning("dead letter %s has no source-topic header: skipped", where)
                skipped += 1
            elif omitted:
                log.warning(
                    "dead letter %s was stored without its %s-byte value (over the size limit): skipped; "
                    "the record is at %s",
                    where,
                    omitted.decode(),
                    _source(headers),
                )
                skipped += 1
            else:
                # a record without a key (it bypassed the gateway; the worker keyed it by its object) goes back to its
                # partition: the producer would pick one at random, away from its object's state
                position = source_position(headers) if record.key is None else None
                await producer.send_and_wait(
                    source.decode(errors="replace"),  # a name that is not one fails the send: exit 2, nothing lost
                    record.value,
                    key=record.key,
                    partition=position[1] if position is not None else None,
                    headers=replay_headers(headers),
                )
                replayed += 1
            try:
                await consumer.commit({TopicPartition(tp.topic, tp.partition): record.offset + 1})
            except (CommitFailedError, IllegalStateError) as exc:  # another replay joined: it takes over
                log.warning(
                    "dead letter %s not committed: its partition went to another replay (%r), which re-publishes "
                    "it once more (workers drop the copy of an applied event); this one stops",
                    where,
                    exc,
                )
                break
    finally:
        await consumer.stop()
        await producer.stop()
    return Replayed(replayed, skipped, discarded, frozenset(found))


async def pending(settings: Settings, show: Callable[[str], None], stall_timeout: float = 30.0) -> int:
    """Describe to ``show`` each dead letter a replay would take; return how many."""
    count = 0
    async for where, headers in _pending(settings, stall_timeout):
        show(describe(where, headers))
        count += 1
    return count


async def _pending(
    settings: Settings, stall_timeout: float = 30.0
) -> AsyncIterator[tuple[str, list[tuple[str, bytes]]]]:
    """Each dead letter a replay would take, where it is and its headers. Nothing is sent or committed, and the group
    is not joined: the partitions are read from its commits beside it, so a replay running meanwhile keeps all of
    them (a join would take half away, and it would stop early, as if caught up)."""
    consumer = _consumer(settings)
    try:
        await consumer.start()
        partitions = await _dead_letter_partitions(consumer, settings)
        if not partitions:
            return
        # assigned, not subscribed: positions start at the group's committed offsets (else the beginning)
        consumer.assign([TopicPartition(settings.dlq_topic, partition) for partition in sorted(partitions)])
        async for tp, record, headers in _dead_letters(consumer, None, stall_timeout):
            yield record_position(tp.topic, tp.partition, record.offset), headers
    finally:
        await consumer.stop()


async def _not_pending(settings: Settings, names: Collection[str]) -> list[str]:
    """Which of ``names`` (event ids, positions) no dead letter a replay would take has."""
    left = set(names)
    async for where, headers in _pending(settings):
        left -= {where, (header(headers, "event-id") or b"").decode(errors="replace")}
    return sorted(left)


async def _dead_letter_partitions(consumer: AIOKafkaConsumer, settings: Settings) -> set[int]:
    """The dead-letter topic's partitions, read without creating it; none (said in the log) when there is no such
    topic yet, no dead letter having been written, or this user may not describe it."""
    await consumer.topics()
    partitions = consumer.partitions_for_topic(settings.dlq_topic) or set()
    if not partitions:
        log.warning("no topic %s (or this user may not describe it): no dead letter", settings.dlq_topic)
    return partitions


def _consumer(settings: Settings) -> AIOKafkaConsumer:
    """A consumer of the replay group (``<app id>-replay``), its topic not chosen yet (subscribed or assigned)."""
    return AIOKafkaConsumer(
        **client_options(settings),
        group_id=settings.replay_group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=int(settings.worker_session_timeout * 1000),
        rebalance_timeout_ms=int(settings.worker_rebalance_timeout * 1000),
    )


async def _dead_letters(
    consumer: AIOKafkaConsumer, limit: int | None, stall_timeout: float, join_timeout: float = 60.0
) -> AsyncIterator[tuple[TopicPartition, ConsumerRecord[bytes, bytes], list[tuple[str, bytes]]]]:
    """Up to ``limit`` records with their headers, until every assigned partition is read to its end (caught up).

    Each partition is read up to its end as this run first fetched it (its high watermark: right even where the
    embedded broker under-lists end offsets), then paused: what is dead-lettered later is left to the next run. A
    replayed event that fails again while workers run comes back as a new dead letter within a second or so, and a
    run that took those too re-published them for as long as they kept failing, never catching up.

    Caught up is judged by those ends, not by a pause in the records: a batch slow to re-publish, or fetches failing
    for a few seconds (a leader moving), ended runs as caught up with dead letters left. ReplayStalled when a
    partition short of its end brings nothing for ``stall_timeout`` seconds (counted from when the caller handled
    the last record); GroupJoinTimeout when no partition came in ``join_timeout`` (joining takes seconds on Kafka:
    ``group.initial.rebalance.delay.ms``, 3 s by default, for a group nobody is in).
    """
    count = 0
    stalled_since: float | None = None
    joining_until: float | None = time.monotonic() + join_timeout  # None once a partition was assigned
    assigned: set[TopicPartition] = set()
    ends: dict[TopicPartition, int] = {}  # kept through rebalances: a partition handed back keeps its end
    while limit is None or count < limit:
        batch = await consumer.getmany(timeout_ms=500, max_records=limit and limit - count)
        if consumer.assignment() != assigned:  # joined, or a rebalance: the stall time starts again
            assigned, stalled_since = set(consumer.assignment()), None
            if assigned:
                joining_until = None
        for tp in assigned - ends.keys():  # a fetch sets the high watermark, with records or without
            end = consumer.highwater(tp)
            if end is not None:
                ends[tp] = end
        if not batch:
            now = time.monotonic()
            if not assigned:
                if joining_until is None:  # the partitions went to another replay: it takes them on
                    return
                if now > joining_until:
                    raise GroupJoinTimeout(
                        f"no partition of the dead-letter topic assigned in {join_timeout:g} s: another "
                        "`hookstream replay` may be running"
                    )
            elif not (behind := await _behind(consumer, assigned, ends)):
                return
            elif stalled_since is None:
                stalled_since = now
            elif now - stalled_since > stall_timeout:
                left = ", ".join(sorted(record_position(tp.topic, tp.partition, ends.get(tp, -1)) for tp in behind))
                raise ReplayStalled(f"nothing read for {stall_timeout:g} s short of the dead letters' ends ({left})")
            continue
        for tp, records in batch.items():
            end = ends.get(tp)
            for record in records:
                if end is not None and record.offset >= end:  # dead-lettered since this run began
                    consumer.pause(tp)  # not committed: the next run starts there
                    break
                count += 1
                yield tp, record, header_pairs(record.headers)
        stalled_since = None  # the batch is handled (sent and committed): progress


async def _behind(
    consumer: AIOKafkaConsumer, assigned: set[TopicPartition], ends: dict[TopicPartition, int]
) -> list[TopicPartition]:
    """The assigned partitions not yet read up to their end as this run first fetched it (its end unknown yet)."""
    return [tp for tp in assigned if (end := ends.get(tp)) is None or await consumer.position(tp) < end]


class ReplayStalled(KafkaError):
    """A dead-letter partition short of its end brought nothing for the stall timeout (fetches failing)."""


class GroupJoinTimeout(KafkaError):
    """The replay's consumer group assigned it no partition of the dead-letter topic in time."""


def replay_headers(headers: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The event's own headers, and when it was replayed (an earlier replay's time replaced)."""
    kept = [(k, v) for k, v in original_headers(headers) if k != REPLAYED_AT]
    return [*kept, (REPLAYED_AT, b"%d" % (time.time_ns() // 1_000_000))]


def _source(headers: list[tuple[str, bytes]]) -> str:
    """Where the dead letter's record is: ``topic[partition]@offset``."""
    return "{}[{}]@{}".format(*(_text(headers, name) for name in ("source-topic", "source-partition", "source-offset")))


def _text(headers: list[tuple[str, bytes]], name: str) -> str:
    return (header(headers, name) or b"?").decode(errors="replace")


def describe(where: str, headers: list[tuple[str, bytes]]) -> str:
    """One dead letter in two lines: where it is, its event and source; why it failed (the error's message)."""
    event, attempts = _text(headers, "event-id"), _text(headers, "attempts")
    omitted = " (stored without its value)" if header(headers, VALUE_OMITTED) else ""
    return (
        f"{where}  {event} ({_text(headers, 'event-type')}) from {_source(headers)}, {attempts} attempt(s){omitted}\n"
        f"    {_text(headers, 'error-type')}: {_text(headers, 'error-message')}"
    )


def run_replay(settings: Settings, limit: int | None, list_only: bool = False, discard: Collection[str] = ()) -> int:
    """The command: 0 when every dead letter was replayed, skipped or discarded, 1 when an event to discard was not
    found among them, 2 when Kafka failed it (commits so far hold)."""
    try:
        if list_only:
            print(f"{asyncio.run(pending(settings, print))} dead letter(s) in {settings.dlq_topic} not replayed yet")
            return 0
        if "" in discard:  # an unset shell variable: it would match no dead letter, after replaying the others
            print("hookstream replay: --discard needs an event id or a position, not an empty one", file=sys.stderr)
            return 2
        # a mistyped id found only at the end would come after every other dead letter was re-published
        unknown = asyncio.run(_not_pending(settings, discard)) if discard else []
        if unknown:
            print(
                f"hookstream replay: no dead letter to discard for {', '.join(unknown)} (hookstream replay --list "
                "shows those waiting): nothing replayed",
                file=sys.stderr,
            )
            return 1
        done = asyncio.run(replay(settings, limit, discard=discard))
    except KafkaError as exc:
        print(f"hookstream replay: Kafka at {settings.kafka_bootstrap_servers}: {exc!r}", file=sys.stderr)
        if settings.kafka_enable_idempotence and isinstance(exc, UnknownError):  # how the embedded broker refuses
            print(
                "hookstream replay: the embedded development broker takes no idempotent producer: against it, set "
                "KAFKA_ENABLE_IDEMPOTENCE=false (hookstream dev prints what to export)",
                file=sys.stderr,
            )
        return 2
    print(
        f"replayed {done.replayed} dead letter(s) from {settings.dlq_topic}"
        + (f", skipped {done.skipped}" if done.skipped else "")
        + (f", discarded {done.discarded}" if done.discarded else "")
    )
    missing = sorted(set(discard) - done.found)
    if missing:
        print(
            f"hookstream replay: no dead letter to discard for {', '.join(missing)} among the {done.read} read",
            file=sys.stderr,
        )
        return 1
    return 0

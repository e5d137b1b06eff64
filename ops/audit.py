"""``hookstream audit``: was every acknowledged event applied, exactly once?

A 200 from the gateway means the event is in an event topic, so the topics are the record of what was
acknowledged. The workers' record of what they did is the changelog of the ``objects`` table (one record per
applied event, whose ``last_event_id`` names it and whose ``events_applied`` numbers it, and one per stale run of an
``include_stale`` handler, naming the last applied event again) and the dead-letter
topic. The audit reads all three from the broker, as a plain consumer outside any group, and classifies every
acknowledged event id:

- applied: some changelog record names it (or an object still remembers it among its recent event ids);
  *duplicated* when two changelog records of one object name it with different counts (applied twice);
- dead-lettered: a dead letter points at its last record (a replayed dead letter is judged by the replay);
- unhandled: no handler takes its type and kind of object (nothing to apply), as the audit's
  ``HOOKSTREAM_HANDLERS`` says: events skipped before a handler for their type was added count as missing, so
  audit such windows with ``--since``;
- pending: its last record lies beyond the workers' committed offset (not processed yet);
- stale: processed, not applied, and a newer event of its object was applied before it (earlier in the
  partition, or before the window): Stripe's out-of-order delivery;
- missing: none of these. Something acknowledged was lost.

Records the brokers deleted (retention) before the workers read them are no longer there to classify: a partition
whose committed offset lies below its log's start reports that range as *gone*. (Once the workers have read past
such a gap, their ``hookstream_records_skipped_total`` and their log say so, and the audit no longer sees it.)

Two changelog records naming one event with the same count are one application sent twice (a producer retry), or
an application and a later stale run of an ``include_stale`` handler, not a double application; a worker applying
an event after losing its partition, from the same state as the new owner, would look the same.

The changelog is a compacted topic: where the broker has compacted old records away, only the 32 recent event
ids each object remembers still show an application (and, with the events' own records, what made a later
delivery stale). Audit windows longer than the changelog's ``min.compaction.lag.ms`` can therefore report false
"missing" ids for busy objects; ``--since`` keeps to the window that holds. A double application shows only as
two records naming one event: once compaction has removed one of them, it goes unseen.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import msgspec
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ops.kafka import client_options, record_position
from ops.settings import Settings
from streams.dead_letters import header, header_pairs, source_position
from streams.registry import HandlerRegistry, registry
from streams.state import LIFECYCLE, decode_state, older_within_a_second


class AuditError(RuntimeError):
    """The audit could not read what it needs from the broker."""


class AuditReport(msgspec.Struct, kw_only=True):
    """The verdict on every event id acknowledged in the window; ``ok`` when none is missing or duplicated."""

    since: str | None
    topics: list[str]
    records: int
    acknowledged: int
    applied: int
    duplicated: list[str]
    dead_lettered: list[str]
    unhandled: list[str]
    pending: list[str]
    stale: list[str]
    missing: list[str]
    gone: list[str] = []  # ranges of records deleted before the workers read them: topic[partition]@first..last

    @property
    def ok(self) -> bool:
        return not self.missing and not self.duplicated and not self.gone


class _Delivery(msgspec.Struct, array_like=True):
    """One record of an event in an event topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    event_type: str | None
    created: int | None
    status: str | None = None  # its object's, for the stale rule within a second


class _Applied(NamedTuple):
    """An event an object applied: when it happened, the object's status after it, and its type (None: not
    known)."""

    created: int
    status: str | None
    event_type: str | None = None


class _Evidence:
    """What the changelog and dead letters say the workers did."""

    def __init__(self) -> None:
        self.applications: dict[str, set[tuple[bytes, int]]] = defaultdict(set)
        self.remembered: dict[bytes, set[str]] = defaultdict(set)  # object -> its recent event ids
        self.applied: dict[bytes, dict[str, _Applied]] = defaultdict(dict)  # object -> applied event -> when
        self.dead_records: set[tuple[str, int, int]] = set()

    def read_changelog(self, record: ConsumerRecord[bytes, bytes]) -> None:
        if record.key is None or record.value is None:  # a tombstone: the object was deleted
            return
        state = decode_state(record.value)
        if state.last_event_id is not None:
            self.applications[state.last_event_id].add((record.key, state.events_applied))
        self.remembered[record.key].update(state.recent_event_ids)
        if state.last_event_id is not None and state.last_event_created is not None:
            self.applied[record.key][state.last_event_id] = _Applied(
                state.last_event_created, state.status, state.last_event_type
            )

    def fill_in(self, deliveries: dict[str, list[_Delivery]]) -> None:
        """Add the events an object remembers applying, with when they happened (their records say), where the
        changelog no longer holds their own records: compaction keeps an object's latest record only, and the
        stale rule needs every newer event an object applied."""
        for key, event_ids in self.remembered.items():
            applied = self.applied[key]
            for event_id in event_ids - applied.keys():
                known = next((d for d in deliveries.get(event_id, ()) if d.created is not None), None)
                if known is not None and known.created is not None:  # its status: the snapshot's, as applied
                    applied[event_id] = _Applied(known.created, known.status, known.event_type)

    def read_dead_letter(self, record: ConsumerRecord[bytes, bytes]) -> None:
        source = source_position(header_pairs(record.headers))
        if source is not None:
            self.dead_records.add(source)


async def audit(
    settings: Settings, since_ms: int | None = None, handlers: HandlerRegistry | None = None
) -> AuditReport:
    """Audit the event topics' records from ``since_ms`` (epoch milliseconds; all retained records if None)."""
    if handlers is None:
        handlers = _registry(settings)
    options = client_options(settings)
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    event_topics = sorted(t for t in existing if t.startswith(settings.topic_prefix) and t != settings.dlq_topic)
    committed, starts = await _committed_offsets(options, settings.worker_app_id, event_topics)
    gone = [  # a partition never committed counts from 0: nothing of it was read
        f"{record_position(*tp, read)}..{start - 1}"
        for tp, start in sorted(starts.items())
        if (read := committed.get(tp, 0)) < start
    ]
    subscribed = {settings.topic_prefix + object_type for object_type in handlers.object_types}

    deliveries: dict[str, list[_Delivery]] = defaultdict(list)
    records = 0

    def read_event(record: ConsumerRecord[bytes, bytes]) -> None:
        nonlocal records
        if since_ms is not None and record.timestamp < since_ms:
            return
        records += 1
        event_id, delivery = _delivery(record)
        deliveries[event_id].append(delivery)

    evidence = _Evidence()
    await _scan(options, event_topics, read_event, since_ms)
    await _scan(options, [t for t in (settings.changelog_topic,) if t in existing], evidence.read_changelog)
    await _scan(options, [t for t in (settings.dlq_topic,) if t in existing], evidence.read_dead_letter)

    evidence.fill_in(deliveries)
    remembered = set().union(*evidence.remembered.values())
    verdicts: dict[str, list[str]] = defaultdict(list)
    applied = 0
    for event_id, seen in deliveries.items():
        applications = evidence.applications.get(event_id)
        last = max(seen, key=lambda d: d.offset)  # a redelivery or a replay comes later in the same partition
        object_type = last.topic.removeprefix(settings.topic_prefix)  # what its topic carries, as for the workers
        if applications or event_id in remembered:
            applied += 1
            if applications and len(applications) > 1:
                verdicts["duplicated"].append(event_id)
        elif (last.topic, last.partition, last.offset) in evidence.dead_records:
            verdicts["dead_lettered"].append(event_id)
        elif last.topic not in subscribed or (
            last.event_type and handlers.lookup(last.event_type, object_type) is None
        ):
            verdicts["unhandled"].append(event_id)
        elif last.offset >= committed.get((last.topic, last.partition), 0):
            verdicts["pending"].append(event_id)
        elif _superseded(last, object_type, evidence, deliveries):
            verdicts["stale"].append(event_id)
        else:
            verdicts["missing"].append(event_id)
    return AuditReport(
        since=None if since_ms is None else _iso(since_ms),
        topics=event_topics,
        records=records,
        acknowledged=len(deliveries),
        applied=applied,
        **{
            name: sorted(verdicts[name])
            for name in ("duplicated", "dead_lettered", "unhandled", "pending", "stale", "missing")
        },
        gone=gone,
    )


async def audit_until_settled(settings: Settings, since_ms: int | None, wait: float) -> AuditReport:
    """Audit again (every second, up to ``wait`` seconds) while events are still pending."""
    deadline = time.monotonic() + wait
    handlers = _registry(settings)
    while True:
        report = await audit(settings, since_ms, handlers)
        if not report.pending or time.monotonic() >= deadline:
            return report
        await asyncio.sleep(1.0)


def _registry(settings: Settings) -> HandlerRegistry:
    """The handlers the workers run (their modules register with the shared registry when imported)."""
    registry.discover(settings.handler_modules)
    return registry


async def _committed_offsets(
    options: dict[str, object], group: str, topics: list[str]
) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]]:
    """The workers' committed offset of every partition of ``topics`` (partitions without one are left out), and
    where each partition's log starts now."""
    consumer = AIOKafkaConsumer(**options, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        offsets = {}
        for tp in partitions:
            offset = await consumer.committed(tp)
            if offset is not None and offset >= 0:
                offsets[(tp.topic, tp.partition)] = offset
        starts = await consumer.beginning_offsets(partitions) if partitions else {}
        return offsets, {(tp.topic, tp.partition): start for tp, start in starts.items()}
    finally:
        await consumer.stop()


def _delivery(record: ConsumerRecord[bytes, bytes]) -> tuple[str, _Delivery]:
    """The event id of a record and where it lies: each of its id, type and time from its body, as the workers
    read the event, else from its headers (the gateway's copies of them), its object's status, and its object as
    the workers key it (the record's key, else the object's id, else the event's).

    A record that is not a Stripe event (it bypassed the gateway) is identified by its position.
    """
    headers = header_pairs(record.headers)
    event_id, event_type, created = (
        (value or b"").decode(errors="replace") or None
        for value in (header(headers, name) for name in ("event-id", "event-type", "event-created"))
    )
    body, obj = _read_body(record.value)
    event_id = body.id or event_id
    if body.created is None and created and created.isascii() and created.isdigit():
        body.created = int(created)
    where = _Delivery(
        record.topic,
        record.partition,
        record.offset,
        record.key or (obj.id or event_id or "").encode() or None,
        body.type or event_type,
        body.created,
        obj.status,
    )
    return event_id or record_position(record.topic, record.partition, record.offset), where


class _Object(msgspec.Struct):
    id: Any = None
    status: Any = None


class _Data(msgspec.Struct):
    object: _Object | None = None


class _Envelope(msgspec.Struct):
    """What the audit reads of a body: each field as far as it reads (``_read_body`` drops one of another type:
    a number for an id, a text for a time), and ``data`` apart, so that an odd object loses only what it holds."""

    id: Any = None
    type: Any = None
    created: Any = None
    data: msgspec.Raw = msgspec.Raw(b"null")


def _read_body(value: bytes | None) -> tuple[_Envelope, _Object]:
    """The envelope and the object (with a string id and status, else None) of a record's value, as far as they
    read; empty ones for a value that is not a JSON object."""
    try:
        body = msgspec.json.decode(value or b"", type=_Envelope)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _Envelope(), _Object()
    body.id, body.type = (v if isinstance(v, str) else None for v in (body.id, body.type))
    if not isinstance(body.created, int) or isinstance(body.created, bool):
        body.created = None
    try:
        data = msgspec.json.decode(body.data, type=_Data | None)
    except (msgspec.DecodeError, msgspec.ValidationError):
        data = None
    obj = data.object if data is not None else None
    if obj is None:
        return body, _Object()
    return body, _Object(*(v if isinstance(v, str) else None for v in (obj.id, obj.status)))


def _step_of(event_type: str | None) -> int:
    """How far an applied event took its object (``LIFECYCLE``): every newer event of a second is compared, so the
    furthest one decides, as the worker's ``second_step``."""
    return LIFECYCLE.get(event_type or "", 0)


def _superseded(
    delivery: _Delivery, object_type: str, evidence: _Evidence, deliveries: dict[str, list[_Delivery]]
) -> bool:
    """Whether a newer event of the same object was applied before ``delivery`` was processed: the workers' stale
    rule (``streams.state.judge``), within a second included.

    Before means at a lower offset of the same partition (workers go in partition order) than a delivery of it
    that was not dead-lettered, or outside the window altogether (applied before any record the audit read). A
    lost event whose newer sibling came after it is not superseded: it is missing.
    """
    if delivery.key is None or delivery.created is None:
        return False
    for newer_id, newer in evidence.applied.get(delivery.key, {}).items():
        if newer.created < delivery.created or (
            newer.created == delivery.created
            and not older_within_a_second(
                object_type, newer.status, delivery.event_type or "", delivery.status, _step_of(newer.event_type)
            )
        ):
            continue
        seen = deliveries.get(newer_id)
        if seen is None:
            return True
        offsets = [d.offset for d in seen if (d.topic, d.partition, d.offset) not in evidence.dead_records]
        if offsets and min(offsets) < delivery.offset:
            return True
    return False


async def _scan(
    options: dict[str, object],
    topics: Iterable[str],
    visit: Callable[[ConsumerRecord[bytes, bytes]], None],
    since_ms: int | None = None,
    stall_timeout: float = 60.0,
) -> None:
    """Read every partition of ``topics`` up to its high watermark (from ``since_ms`` when given).

    The end is the high watermark of fetch responses, not ListOffsets: the embedded broker under-reports the
    latter after multi-record batches (DESIGN.md).
    """
    topics = list(topics)
    if not topics:
        return
    consumer = AIOKafkaConsumer(
        **options,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 << 20,
    )
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(partitions)
        remaining = set(partitions)
        if since_ms is None:
            await consumer.seek_to_beginning(*partitions)
        else:
            found = await consumer.offsets_for_times({tp: since_ms for tp in partitions})
            for tp, at in found.items():
                if at is None:  # nothing as recent as since_ms
                    remaining.discard(tp)
                    consumer.pause(tp)
                else:
                    consumer.seek(tp, at.offset)
        progress = time.monotonic()
        while remaining:
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for records in batch.values():
                for record in records:
                    visit(record)
            if batch:
                progress = time.monotonic()
            for tp in list(remaining):
                high = consumer.highwater(tp)
                if high is not None and await consumer.position(tp) >= high:
                    remaining.discard(tp)
                    consumer.pause(tp)
            if remaining and time.monotonic() - progress > stall_timeout:
                names = ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in remaining))
                raise AuditError(f"no progress reading {names} for {stall_timeout:.0f}s")
    finally:
        await consumer.stop()


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> int:
    """``--since``: an ISO 8601 time (UTC unless it says otherwise) or a duration ago (``90s``, ``30m``, ``2h``,
    ``7d``); epoch milliseconds."""
    now = time.time() if now is None else now
    match = _DURATION.match(text.strip())
    if match:
        return int((now - float(match.group(1)) * _UNIT_SECONDS[match.group(2)]) * 1000)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r}: give an ISO 8601 time (2026-11-27T09:00:00Z) or a duration (30m, 2h, 7d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


def format_report(report: AuditReport, show: int) -> str:
    """The report for people: one line per verdict, with up to ``show`` ids each."""
    window = f"since {report.since}" if report.since else "over all retained records"
    lines = [
        f"audit of {len(report.topics)} event topic(s) {window}",
        f"{'acknowledged':<14}{report.acknowledged:>10,}  events ({report.records:,} records)",
        f"{'applied':<14}{report.applied:>10,}",
    ]
    for name in ("duplicated", "dead_lettered", "unhandled", "stale", "pending", "missing", "gone"):
        ids: list[str] = getattr(report, name)
        shown = " ".join(ids[:show]) + (f" ... (+{len(ids) - show})" if len(ids) > show else "")
        lines.append(f"{name.replace('_', '-'):<14}{len(ids):>10,}  {shown}".rstrip())
    if report.gone:
        lines.append(
            "gone: records the brokers deleted (retention) before the workers read them; resend their events from "
            "Stripe (Dashboard, or `stripe events resend`)"
        )
    lines.append(
        "OK: every acknowledged event is accounted for" if report.ok else "FAILED: see missing/duplicated/gone"
    )
    return "\n".join(lines)


def run_audit(settings: Settings, since: str | None, wait: float, as_json: bool, show: int) -> int:
    """The command: print the report; 1 when an acknowledged event is missing or was applied twice."""
    since_ms = parse_since(since) if since else None
    report = asyncio.run(audit_until_settled(settings, since_ms, wait))
    print(msgspec.json.encode(report).decode() if as_json else format_report(report, show))
    return 0 if report.ok else 1

"""``hookstream audit`` against a real broker and worker: every verdict reached, and a loss or a double
application that really happened in the broker's data is reported with its ids and a failing exit status."""

from __future__ import annotations

import asyncio
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from gateway.envelope import Record, to_record
from ops.audit import _delivery, parse_since
from ops.fixtures import build_event, encode
from streams.state import ObjectState, encode_state
from tests.support import BrokerInfo, charge, hookstream, produce, start_worker, unique

pytestmark = pytest.mark.integration

BASE = 1_790_000_000


def run_audit(broker: BrokerInfo, app_id: str, prefix: str, *args: str) -> tuple[int, dict[str, Any], str]:
    """``hookstream audit --json ...`` as an operator would run it; (exit status, report, stderr)."""
    done = audit_command(broker, app_id, prefix, "--json", *args)
    report = msgspec.json.decode(done.stdout) if done.stdout.strip() else {}
    return done.returncode, report, done.stderr


def audit_command(broker: BrokerInfo, app_id: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    return hookstream(broker, app_id, prefix, "audit", *args)


def test_audit_accounts_for_every_event_and_reports_losses(broker: BrokerInfo) -> None:
    app_id, prefix = unique("audit")
    applied = [charge(prefix, f"ch_{i}", seq, BASE + seq) for seq in range(5) for i in range(20)]
    redelivered = applied[7]
    stale = charge(prefix, "ch_3", 99, BASE - 100)  # older than everything ch_3 has applied
    poison = charge(prefix, "ch_poison", 0, BASE, fail=True)
    unhandled = charge(prefix, "ch_5", 100, BASE + 50, event_type="charge.pending")  # no recording handler
    other_topic = to_record_of(build_event("customer.created", object_id="cus_1", created=BASE), prefix)
    not_json = Record(f"{prefix}charge", b"ch_9", b"\x00 not json", [], "", "")
    produce(broker.bootstrap_servers, [*applied, redelivered, poison, unhandled, other_topic, not_json])
    produce(broker.bootstrap_servers, [stale])  # after the newer ones of ch_3 (stale only once they are applied)

    with start_worker(broker, app_id, prefix, HANDLER_MAX_ATTEMPTS="2", HANDLER_RETRY_BACKOFF="0.05"):
        status, report, stderr = run_audit(broker, app_id, prefix, "--wait", "90")
    assert status == 0, (stderr, report)
    assert report["pending"] == [] and report["missing"] == [] and report["duplicated"] == []
    assert report["acknowledged"] == len(applied) + 5  # the redelivery is the same event
    assert report["records"] == len(applied) + 6
    assert report["applied"] == len(applied)
    assert report["stale"] == [stale.event_id]
    assert set(report["unhandled"]) == {unhandled.event_id, other_topic.event_id}
    charge_topic = f"{prefix}charge"
    dead = set(report["dead_lettered"])
    assert poison.event_id in dead and len(dead) == 2
    assert next(d for d in dead if d != poison.event_id).startswith(f"{charge_topic}[")  # identified by position

    # A loss, made for real: three events acknowledged, then the workers' group commits past them unapplied
    # (what a worker that acked before applying would do).
    lost = [charge(prefix, "ch_lost", seq, BASE + seq) for seq in range(3)]
    produce(broker.bootstrap_servers, lost)
    asyncio.run(commit_to_end(broker.bootstrap_servers, app_id, charge_topic))
    # ... and a newer event of the same object applied afterwards does not make them look "stale"
    newer = charge(prefix, "ch_lost", 3, BASE + 3)
    produce(broker.bootstrap_servers, [newer])
    with start_worker(broker, app_id, prefix):
        status, report, stderr = run_audit(broker, app_id, prefix, "--wait", "90")
    assert status == 1
    assert report["missing"] == sorted(r.event_id for r in lost), (stderr, report)
    assert report["pending"] == [] and report["stale"] == [stale.event_id]
    assert report["applied"] == len(applied) + 1

    # A double application, made for real: a changelog record applying an already applied event again.
    twice = applied[0]
    state = ObjectState(
        object_id="ch_0", object_type="charge", last_event_id=twice.event_id, last_event_created=BASE, events_applied=9
    )
    asyncio.run(send(broker.bootstrap_servers, f"{app_id}-objects-changelog", b"ch_0", encode_state(state)))
    status, report, _ = run_audit(broker, app_id, prefix)
    assert status == 1 and report["duplicated"] == [twice.event_id]

    # The text report names what is wrong.
    done = audit_command(broker, app_id, prefix)
    assert done.returncode == 1
    missing_line = next(line for line in done.stdout.splitlines() if line.startswith("missing"))
    assert all(r.event_id in missing_line for r in lost), done.stdout
    assert "FAILED" in done.stdout


def test_a_handler_module_that_does_not_import_is_exit_2_not_a_loss(broker: BrokerInfo) -> None:
    """Exit 1 says an event is missing or applied twice; a monitoring script reads it so. A handler module audit
    cannot import (run from another directory, a typo in HOOKSTREAM_HANDLERS) checked nothing: exit 2, one line."""
    app_id, prefix = unique("audit-import")
    done = hookstream(broker, app_id, prefix, "audit", env={"HOOKSTREAM_HANDLERS": "no_such_handlers"})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "handler module no_such_handlers does not import" in done.stderr


def test_records_deleted_before_the_workers_read_them_are_reported_gone(
    broker: BrokerInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention deleted records the workers had not read (stopped, or far behind): they are no longer in the topic
    to classify, and the audit said OK over what was left. Their range is reported, and the audit fails. (The
    embedded broker deletes nothing: where the log starts is given here, the rest is read from the broker.)"""
    from ops.audit import audit, format_report
    from ops.settings import Settings
    from streams.registry import HandlerRegistry

    app_id, prefix = unique("gone")
    produce(broker.bootstrap_servers, [charge(prefix, "ch_gone", seq, BASE + seq) for seq in range(3)])
    topic = f"{prefix}charge"

    async def positions(options: Any, group: str, topics: list[str]) -> tuple[dict[Any, int], dict[Any, int]]:
        assert group == app_id and topic in topics
        # partition 0 starts past its commit, partition 2 past 0 with no commit at all (no worker ever read it)
        return {(topic, 0): 2, (topic, 1): 7}, {(topic, 0): 5, (topic, 1): 7, (topic, 2): 3, (topic, 3): 0}

    monkeypatch.setattr("ops.audit._committed_offsets", positions)
    settings = Settings.from_env(broker.app_env(app_id, prefix))
    report = asyncio.run(audit(settings, handlers=HandlerRegistry()))
    assert report.gone == [f"{topic}[0]@2..4", f"{topic}[2]@0..2"] and not report.ok
    assert report.acknowledged == 3  # what is left is still judged (unhandled here: no handlers)
    text = format_report(report, show=5)
    assert f"{'gone':<14}{2:>10}  {topic}[0]@2..4 {topic}[2]@0..2" in text and "resend their events from Stripe" in text
    assert text.endswith("FAILED: see missing/duplicated/gone")


def test_audit_since_counts_only_the_window(broker: BrokerInfo) -> None:
    app_id, prefix = unique("since")
    before = [charge(prefix, f"ch_{i}", 0, BASE) for i in range(5)]
    produce(broker.bootstrap_servers, before)
    time.sleep(1.5)
    cut = time.time() - 0.5
    after = [charge(prefix, f"ch_{i}", 1, BASE + 1) for i in range(3)]
    produce(broker.bootstrap_servers, after)
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(cut)) + f".{int(cut % 1 * 1000):03d}+00:00"
    status, report, stderr = run_audit(broker, app_id, prefix, "--since", since)
    assert report["acknowledged"] == 3, (stderr, report)
    assert sorted(report["pending"]) == sorted(r.event_id for r in after)  # no worker has run: none processed
    assert status == 0  # pending is not missing
    status, report, _ = run_audit(broker, app_id, prefix)
    assert report["acknowledged"] == 8


def test_since_accepts_times_and_durations() -> None:
    now = 1_800_000_000.0
    assert parse_since("30m", now) == (now - 1800) * 1000
    assert parse_since("2h", now) == (now - 7200) * 1000
    assert parse_since("1.5d", now) == (now - 129600) * 1000
    assert parse_since("2027-01-15T08:00:00Z") == int(datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp() * 1000)
    assert parse_since("2027-01-15T09:00:00+01:00") == parse_since("2027-01-15T08:00:00")
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_since("yesterday")


def to_record_of(event: dict[str, Any], prefix: str) -> Record:
    return to_record(encode(event), prefix, int(time.time() * 1000))


class FaustProtocol(RoundRobinPartitionAssignor):
    """Round robin under the name of Faust's assignor, so that a plain consumer may join the workers' group."""

    name = "faust"


async def commit_to_end(bootstrap: str, group: str, topic: str) -> None:
    """Join ``group`` and commit its offsets of ``topic`` at each partition's high watermark, unprocessed."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        rebalance_timeout_ms=3000,
        partition_assignment_strategy=(FaustProtocol,),  # the group's protocol, as the workers left it
    )
    await consumer.start()
    try:
        ends: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=300)
            partitions = consumer.assignment()
            ends = {tp: high for tp in partitions if (high := consumer.highwater(tp)) is not None}
            if partitions and len(ends) == len(partitions):
                break
        assert ends, "never joined the group"
        await consumer.commit({tp: end for tp, end in ends.items() if end > 0})
    finally:
        await consumer.stop()


async def send(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


def test_a_record_whose_headers_have_no_value_is_identified_by_its_body() -> None:
    """Kafka allows a header without a value (aiokafka gives None), from a producer other than the gateway: the
    audit crashed on such a record (the workers now apply it)."""
    from aiokafka.structs import ConsumerRecord

    body = encode(build_event("charge.succeeded", object_id="ch_1", event_id="evt_1", created=1_700_000_000))
    headers = [("event-id", None), ("event-type", None), ("x-trace", None)]
    record = ConsumerRecord("stripe.charge", 0, 7, 0, 0, b"ch_1", body, None, 4, len(body), headers)
    name, where = _delivery(record)
    assert name == "evt_1" and where.event_type == "charge.succeeded" and where.created == 1_700_000_000


def test_a_record_is_read_as_far_as_it_reads() -> None:
    """A record from another producer: an odd object (a number for its id, not a dict, no data) loses only what it
    holds, a header of Unicode digits is no time (it crashed the audit), and one without an event id is named by
    its position as ``hookstream replay --discard`` takes it."""
    from aiokafka.structs import ConsumerRecord

    def read(value: bytes, headers: list[tuple[str, bytes]] | None = None) -> tuple[str, Any]:
        record = ConsumerRecord("stripe.charge", 0, 7, 0, 0, None, value, None, 0, len(value), headers or [])
        return _delivery(record)

    for data in (b"{}", b'{"object":"x"}', b'{"object":{"id":5,"status":["odd"]}}', b"null"):
        name, where = read(b'{"id":"evt_1","type":"charge.updated","created":1700000000,"data":' + data + b"}")
        assert (name, where.event_type, where.created, where.status) == ("evt_1", "charge.updated", 1_700_000_000, None)
        assert where.key == b"evt_1"  # keyed as the workers key it: no object id, the event's
    name, where = read(
        b'{"id":"evt_2","data":{"object":{"id":"ch_2","status":"paid"}}}', [("event-created", "²".encode())]
    )
    assert (name, where.key, where.created, where.status) == ("evt_2", b"ch_2", None, "paid")
    assert read(b"[1, 2]")[0] == "stripe.charge[0]@7"
    name, where = read(b'{"id":5,"type":"charge.updated","created":"1700000000","data":{"object":{"id":"ch_3"}}}')
    assert (name, where.event_type, where.created, where.key) == ("stripe.charge[0]@7", "charge.updated", None, b"ch_3")
    # headers that disagree with the body (another producer): the body decides, as in the worker
    headers = [("event-id", b"evt_h"), ("event-type", b"charge.updated"), ("event-created", b"1")]
    name, where = read(b'{"id":"evt_b","type":"charge.refunded","created":1700000001,"data":{"object":{}}}', headers)
    assert (name, where.event_type, where.created) == ("evt_b", "charge.refunded", 1_700_000_001)


# --- the stale rule, on what the audit read (no broker) ------------------------------------------------------


def _judged(
    events: list[dict[str, Any]],
    applied: list[int],
    judged: int,
    dead: tuple[int, ...] = (),
    compacted: bool = False,
) -> bool:
    """Whether the audit finds ``events[judged]`` superseded (stale, not missing), when ``events`` lie at offsets
    0, 1, ... of one partition, the workers applied ``applied`` (their offsets, in order), each with a changelog
    record (only the last one, ``compacted``), and dead-lettered the records at ``dead``."""
    from aiokafka.structs import ConsumerRecord as Consumed

    from ops.audit import _Evidence, _superseded

    def consumed(topic: str, offset: int, key: bytes, value: bytes, headers: Any = ()) -> Consumed[bytes, bytes]:
        return Consumed(topic, 0, offset, 0, 0, key, value, None, len(key), len(value), list(headers))

    obj = events[0]["data"]["object"]
    topic = f"stripe.{obj['object']}"
    deliveries: dict[str, list[Any]] = {}
    for offset, event in enumerate(events):
        record = to_record(encode(event), "stripe.", 0)
        name, where = _delivery(consumed(topic, offset, record.key, record.value, record.headers))
        deliveries.setdefault(name, []).append(where)
    state = ObjectState(object_id=obj["id"], object_type=obj["object"])
    changelog = []
    for count, offset in enumerate(applied, 1):
        event = events[offset]
        state.last_event_id, state.last_event_created = event["id"], event["created"]
        state.status, state.events_applied = event["data"]["object"]["status"], count
        state.recent_event_ids = [*state.recent_event_ids, event["id"]]
        changelog.append(consumed("changelog", count, obj["id"].encode(), encode_state(state)))
    evidence = _Evidence()
    for record in changelog[-1:] if compacted else changelog:
        evidence.read_changelog(record)
    evidence.dead_records.update((topic, 0, offset) for offset in dead)
    evidence.fill_in(deliveries)
    where = next(d for d in deliveries[events[judged]["id"]] if d.offset == judged)
    return _superseded(where, obj["object"], evidence, deliveries)


def _event(event_type: str, event_id: str, created: int, status: str) -> dict[str, Any]:
    object_id = "in_1" if event_type.startswith("invoice.") else "sub_1"
    return build_event(
        event_type, object_id=object_id, event_id=event_id, created=created, object_fields={"status": status}
    )


def test_an_event_the_workers_judge_stale_within_its_second_is_stale_not_missing() -> None:
    """Stripe sends an object's related events within one second in no promised order, and the workers count some
    of them stale (streams.state.judge): a ``.created`` after its sibling, an open invoice after a paid one. The
    audit found no newer sibling for them (same second) and called them missing: exit 1 while nothing was lost."""
    created = _event("customer.subscription.created", "evt_created", BASE, "active")
    updated = _event("customer.subscription.updated", "evt_updated", BASE, "active")
    assert _judged([updated, created], applied=[0], judged=1)
    assert not _judged([created, updated], applied=[1], judged=0)  # lost before its sibling: missing
    paid = _event("invoice.paid", "evt_paid", BASE, "paid")
    finalized = _event("invoice.finalized", "evt_finalized", BASE, "open")
    assert _judged([paid, finalized], applied=[0], judged=1)
    edited = _event("invoice.updated", "evt_edited", BASE, "draft")
    opened = _event("invoice.updated", "evt_opened", BASE, "open")
    assert not _judged([edited, opened], applied=[0], judged=1)  # the workers would have applied it: missing


def test_a_stale_event_stays_stale_once_the_changelog_is_compacted() -> None:
    """Compaction keeps an object's latest record: the newer event that made this one stale is known from the
    object's recent event ids alone. Read from the last record only, the audit said missing."""
    events = [
        _event("customer.subscription.updated", f"evt_{n}", BASE + created, "active")
        for n, created in enumerate((0, 30, 10, 40))
    ]
    assert _judged(events, applied=[0, 1, 3], judged=2, compacted=True)
    assert _judged(events, applied=[0, 1, 3], judged=2)


def test_an_event_lost_after_a_newer_one_was_dead_lettered_is_missing_not_stale() -> None:
    """The newer event failed first (dead-lettered), the older one was then lost, and the newer one applied once
    replayed: nothing newer had been applied when the older one was processed. The audit called it stale."""
    newer = _event("customer.subscription.updated", "evt_newer", BASE + 30, "active")
    older = _event("customer.subscription.updated", "evt_older", BASE + 10, "active")
    assert not _judged([newer, older, newer], applied=[2], judged=1, dead=(0,))
    assert _judged([newer, older, newer], applied=[2], judged=1)  # not dead-lettered: applied first, so stale


def test_a_tie_lost_to_a_further_step_is_stale_for_the_audit_too_after_compaction() -> None:
    """The workers judge a finalized invoice older than its failed payment of the same second (streams/state.py:
    LIFECYCLE); the audit must not call it missing, also once compaction took the failure's own changelog record
    (the object only remembers its id: its type and status come from its delivery)."""
    from ops.audit import _Delivery, _Evidence, _superseded

    failed = _Delivery("stripe.invoice", 0, 10, b"in_1", "invoice.payment_failed", 100, "open")
    finalized = _Delivery("stripe.invoice", 0, 11, b"in_1", "invoice.finalized", 100, "open")
    later = _Delivery("stripe.invoice", 0, 12, b"in_1", "invoice.updated", 105, "open")
    deliveries = {"evt_failed": [failed], "evt_finalized": [finalized], "evt_later": [later]}
    evidence = _Evidence()
    evidence.remembered[b"in_1"] = {"evt_failed", "evt_later"}
    evidence.fill_in(deliveries)  # neither has a changelog record left but the object's latest (not read here)
    assert _superseded(finalized, "invoice", evidence, deliveries)
    assert not _superseded(failed, "invoice", evidence, deliveries)  # the further step is not older

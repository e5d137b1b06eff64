"""Verified events land in Kafka exactly once each: right topic, key, partition, bytes and headers."""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
import types
from typing import Any, NamedTuple

import aiohttp
import msgspec
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2
from confluent_kafka import KafkaError

from gateway.envelope import to_record
from gateway.rdkafka import AsyncProducer, DeliveryFailed, RecordTooLarge, TopicRefused, _failure, librdkafka_config
from gateway.signature import sign
from ops.fixtures import build_event, encode
from ops.kafka import client_options, create_topics
from ops.settings import Settings
from tests.support import SECRET, BrokerInfo, GatewayProcess, consume, start_gateway

pytestmark = pytest.mark.integration

TYPES = [
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "invoice.paid",
    "invoice.upcoming",
    "customer.subscription.updated",
    "checkout.session.completed",
    "charge.dispute.created",
]


def test_posted_events_arrive_exactly_once_with_key_value_and_headers(broker: BrokerInfo) -> None:
    n = 400
    rng = random.Random(7)
    bodies: dict[str, bytes] = {}
    for i in range(n):
        event_type = rng.choice(TYPES)
        event = build_event(
            event_type,
            object_id=f"obj_{rng.randrange(25)}",
            event_id=f"evt_pub_{i}",
            account="acct_42" if i % 3 == 0 else None,
        )
        if event_type == "invoice.upcoming":
            event["data"]["object"].pop("id")  # upcoming invoices have no id yet
        bodies[event["id"]] = encode(event)

    with start_gateway(broker, TOPIC_PREFIX="pub.") as gw:
        statuses = asyncio.run(_post_all(gw, list(bodies.values()), concurrency=32))
        assert statuses == [200] * n
        published = sum(gw.metric("hookstream_events_published_total", event_type=t) for t in TYPES)
        assert published == n

    topics = sorted({to_record(b, "pub.", 0).topic for b in bodies.values()})
    records = consume(broker.bootstrap_servers, topics, n)
    assert len(records) == n
    seen = set()
    for record in records:
        headers = {k: v.decode() for k, v in record.headers}
        event_id = headers["event-id"]
        assert event_id not in seen
        seen.add(event_id)
        body = bodies[event_id]
        event = json.loads(body)
        assert record.value == body  # byte for byte
        obj = event["data"]["object"]
        assert record.topic == "pub." + obj["object"]
        assert record.key == (obj.get("id") or event_id).encode()
        assert record.partition == (murmur2(record.key) & 0x7FFFFFFF) % 8  # Kafka's default partitioner
        assert headers["event-type"] == event["type"]
        assert headers["event-created"] == str(event["created"])
        assert headers["livemode"] == "false"
        assert headers.get("account") == event.get("account")
        assert abs(int(headers["received-at"]) - time.time() * 1000) < 600_000
    assert seen == set(bodies)


async def _post_all(gw: GatewayProcess, bodies: list[bytes], concurrency: int) -> list[int]:
    limit = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:

        async def post(body: bytes) -> int:
            async with (
                limit,
                session.post(gw.url, data=body, headers={"Stripe-Signature": sign(body, SECRET)}) as response,
            ):
                return response.status

        return await asyncio.gather(*(post(b) for b in bodies))


def test_concurrent_publishes_share_produce_requests(broker: BrokerInfo) -> None:
    """200 concurrent sends must not cost 200 broker round trips: librdkafka's own statistics count the
    Produce requests it sent."""
    # a longer linger than the default 2 ms: a pause of this process between two sends (GC, a loaded machine) sent
    # a partial batch, and the count is near the bound (199 records in batches of 16 on 2 partitions: 13 at least)
    settings = Settings.from_env(
        broker.env() | {"TOPIC_PREFIX": "batch.", "TOPIC_PARTITIONS": "2", "PRODUCER_LINGER_MS": "50"}
    )
    sent = _send_concurrently(settings, "batch.", 200)
    print(f"{sent.requests} produce requests for {sent.records} concurrent publishes")
    assert 0 < sent.requests <= sent.records // 10, f"{sent.requests} produce requests for {sent.records} records"


@pytest.mark.parametrize(("codec", "compressed"), [("lz4", True), ("none", False)])
def test_batches_go_to_the_broker_compressed(broker: BrokerInfo, codec: str, compressed: bool) -> None:
    """With the default PRODUCER_COMPRESSION (lz4) the bytes on the wire to the broker are a fraction of the
    events' (Stripe's JSON compresses well); consumers get the bodies back byte for byte."""
    prefix = f"codec{codec}."
    settings = Settings.from_env(broker.env() | {"TOPIC_PREFIX": prefix, "PRODUCER_COMPRESSION": codec})
    sent = _send_concurrently(settings, prefix, 200)
    print(f"{codec}: {sent.wire_bytes} bytes sent for {sent.payload_bytes} bytes of records")
    assert (sent.wire_bytes < sent.payload_bytes / 2) is compressed
    assert sorted(r.value for r in consume(broker.bootstrap_servers, [prefix + "charge"], 200)) == sorted(sent.values)


def _with_charge_topic(settings: Settings) -> Settings:
    """``settings``, with their charge topic created as the gateway creates its topics: its producer may not
    (the brokers' auto-creation is off, gateway/rdkafka.py)."""

    async def create() -> None:
        admin = AIOKafkaAdminClient(**client_options(settings))
        await admin.start()
        try:
            await create_topics(admin, settings, [settings.topic_prefix + "charge"])
        finally:
            await admin.close()

    asyncio.run(create())
    return settings


class _Sent(NamedTuple):
    requests: int
    wire_bytes: int
    records: int
    payload_bytes: int
    values: list[bytes]


def _send_concurrently(settings: Settings, prefix: str, count: int) -> _Sent:
    """Send ``count`` charge events at once through the gateway's producer; what librdkafka's statistics say it
    sent for all but the first (which takes the topic's metadata out of the way)."""
    _with_charge_topic(settings)
    stats: list[dict[str, Any]] = []
    config = librdkafka_config(settings) | {
        "statistics.interval.ms": 100,
        "stats_cb": lambda raw: stats.append(json.loads(raw)),
    }

    def totals() -> tuple[int, int]:
        brokers = stats[-1]["brokers"].values()
        return sum(b["req"].get("Produce", 0) for b in brokers), sum(b["txbytes"] for b in brokers)

    async def reports_after_now() -> None:
        """Until a statistics report made after this moment is in (the first to arrive may be an older one,
        waiting for a poll: reports come every 100 ms, however late a loaded machine serves them)."""
        seen = len(stats)
        for _ in range(300):
            if len(stats) >= seen + 2:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("no statistics report from librdkafka in 15 s")

    async def run() -> _Sent:
        producer = AsyncProducer(config, asyncio.get_running_loop())
        try:
            records = [
                to_record(encode(build_event("charge.succeeded", object_id=f"ch_{i}")), prefix, 0) for i in range(count)
            ]
            first = records[0]
            await producer.send(first.topic, first.value, first.key, first.headers)
            await reports_after_now()
            requests, wire = totals()
            await asyncio.gather(*(producer.send(r.topic, r.value, r.key, r.headers) for r in records[1:]))
            await reports_after_now()
            payload = sum(len(r.value) + len(r.key) for r in records[1:])
            after_requests, after_wire = totals()
            return _Sent(after_requests - requests, after_wire - wire, count - 1, payload, [r.value for r in records])
        finally:
            await producer.close()

    return asyncio.run(run())


def test_a_full_batch_does_not_wait_out_the_linger(broker: BrokerInfo) -> None:
    """With a linger of four minutes, records still go as soon as PRODUCER_BATCH_RECORDS of them share a batch."""
    settings = _with_charge_topic(
        Settings.from_env(
            broker.env()
            | {
                "TOPIC_PREFIX": "full.",
                "GATEWAY_PUBLISH_TIMEOUT": "300",
                "PRODUCER_LINGER_MS": "240000",
                "PRODUCER_BATCH_RECORDS": "4",
            }
        )
    )
    records = [to_record(encode(build_event("charge.succeeded", object_id="ch_full")), "full.", 0) for _ in range(8)]

    async def run() -> None:
        producer = AsyncProducer(librdkafka_config(settings), asyncio.get_running_loop())
        try:
            sends = (producer.send(r.topic, r.value, r.key, r.headers) for r in records)
            # Two full batches of one partition: delivered long before the linger ends, or this times out.
            await asyncio.wait_for(asyncio.gather(*sends), timeout=30)
        finally:
            await producer.close()

    asyncio.run(run())


def test_delivery_reports_keep_coming_after_a_callback_fails(
    broker: BrokerInfo, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback that raises inside librdkafka's poll must not stop the polling: later publishes still complete."""
    settings = _with_charge_topic(Settings.from_env(broker.env() | {"TOPIC_PREFIX": "poll."}))
    failed = threading.Event()

    def statistics_once(_raw: str) -> None:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("a broken callback")

    config = librdkafka_config(settings) | {"statistics.interval.ms": 50, "stats_cb": statistics_once}
    record = to_record(encode(build_event("charge.succeeded", object_id="ch_poll")), "poll.", 0)

    async def run() -> None:
        producer = AsyncProducer(config, asyncio.get_running_loop())
        try:
            assert await asyncio.to_thread(failed.wait, 30)  # the failing callback has run inside a poll
            await asyncio.wait_for(producer.send(record.topic, record.value, record.key, record.headers), timeout=30)
        finally:
            await producer.close()

    asyncio.run(run())
    assert "serving librdkafka's callbacks failed" in caplog.text


def test_close_ends_librdkafkas_threads_even_while_the_producer_is_still_referenced(broker: BrokerInfo) -> None:
    """Something may outlive close with a reference to the producer (a logged traceback of its poll does): its
    librdkafka handle must go anyway, or its threads keep reconnecting to brokers long gone."""
    settings = _with_charge_topic(Settings.from_env(broker.env() | {"TOPIC_PREFIX": "close."}))
    record = to_record(encode(build_event("charge.succeeded", object_id="ch_close")), "close.", 0)

    def threads() -> int:  # librdkafka's are native threads: count the process's
        return len(os.listdir("/proc/self/task"))

    async def run() -> tuple[int, int, int, AsyncProducer]:
        await asyncio.to_thread(lambda: None)  # the executor's thread (close flushes on it) exists before counting
        before = threads()
        producer = AsyncProducer(librdkafka_config(settings), asyncio.get_running_loop())
        await asyncio.wait_for(producer.send(record.topic, record.value, record.key, record.headers), timeout=30)
        during = threads()
        await producer.close()
        for _ in range(50):
            if threads() <= before:
                break
            await asyncio.sleep(0.1)
        with pytest.raises(DeliveryFailed, match="closed"):  # the gateway answers 503 to what comes after
            producer.send(record.topic, record.value, record.key, record.headers)
        return before, during, threads(), producer  # still referenced here

    before, during, after, _ = asyncio.run(run())
    assert during > before
    assert after <= before


def test_a_record_the_broker_refuses_as_too_large_is_told_apart_from_a_failed_delivery() -> None:
    """librdkafka reports MSG_SIZE_TOO_LARGE for a record over message.max.bytes, its own or the broker's: the
    gateway answers 413 for it, not 503 (tests/test_gateway_inputs.py)."""
    assert isinstance(_failure(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)), RecordTooLarge)
    for code in (KafkaError._MSG_TIMED_OUT, KafkaError.NOT_ENOUGH_REPLICAS, KafkaError._TRANSPORT):
        failure = _failure(KafkaError(code))
        assert type(failure) is DeliveryFailed, code
    for code in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
        assert type(_failure(KafkaError(code))) is TopicRefused, code


def test_a_topic_the_broker_refuses_leaves_readiness_and_the_other_topics_alone(broker: BrokerInfo) -> None:
    """A topic the broker refuses (deleted, or no longer writable by this user: its ACLs) is that topic's fault:
    taken for the broker's, it made every pod unready at each event of that type, and sent every topic back
    through creation. Here the broker refuses an invalid name, as the gateway's own checks never let one through.
    So is a topic whose creation the brokers refuse (a managed cluster's topic policy: the embedded broker has
    none, so its answer is given here, as Kafka words it)."""
    from gateway.metrics import GatewayMetrics
    from gateway.publisher import BrokerUnavailable, Publisher

    settings = Settings.from_env(broker.env() | {"TOPIC_PREFIX": "refused."})
    good = to_record(encode(build_event("charge.succeeded", object_id="ch_refused")), "refused.", 0)
    refused = msgspec.structs.replace(good, topic="refused." + "x" * 300)

    forbidden = msgspec.structs.replace(good, topic="refused.forbidden_by_policy")
    electing = msgspec.structs.replace(good, topic="refused.during_an_election")

    async def run() -> tuple[bool, set[str], str, str, str]:
        publisher = Publisher(settings, GatewayMetrics(), probe_interval=3600)  # no probe puts readiness back
        await publisher.start()
        try:
            for _ in range(300):
                if publisher.ready:
                    break
                await asyncio.sleep(0.05)
            await asyncio.wait_for(publisher.publish(good), timeout=30)
            publisher._known_topics.add(refused.topic)  # as if it had been created, then deleted
            with pytest.raises(BrokerUnavailable) as refusal:
                await asyncio.wait_for(publisher.publish(refused), timeout=30)
            admin = publisher._admin
            assert admin is not None
            create_topics = admin.create_topics

            async def policy(new_topics: list[Any], *args: Any, **kwargs: Any) -> Any:
                """The brokers' answer: a policy violation (44) for the forbidden topic, no controller (41) for the
                other one."""
                answer = await create_topics(new_topics, *args, **kwargs)
                said = {forbidden.topic: (44, "not allowed"), electing.topic: (41, None)}
                errors = [(e[0], *said[e[0]]) if e[0] in said else e for e in answer.topic_errors]
                return types.SimpleNamespace(topic_errors=errors)  # all that create_topics reads of it

            admin.create_topics = policy  # type: ignore[method-assign]
            with pytest.raises(BrokerUnavailable) as creation_refused:
                await asyncio.wait_for(publisher.publish(forbidden), timeout=30)
            with pytest.raises(BrokerUnavailable) as no_controller:
                await asyncio.wait_for(publisher.publish(electing), timeout=30)
            told = str(refusal.value), str(creation_refused.value), str(no_controller.value)
            return publisher.ready, set(publisher._known_topics), *told
        finally:
            await publisher.stop()

    ready, known, said, said_at_creation, said_while_electing = asyncio.run(run())
    assert ready and known == {good.topic}
    assert said.startswith(f"the broker refused topic {refused.topic} (") and "may this user write to it?" in said
    assert said_at_creation.startswith(f"cannot create topic {forbidden.topic}: not allowed (create it")
    # the brokers' passing trouble: no advice to create the topic elsewhere
    assert said_while_electing == f"cannot create topic {electing.topic}: error 41"


def _inject_fatal_error(producer: AsyncProducer) -> None:
    """Give librdkafka a fatal error, as its idempotent producer raises on an unresolvable sequence gap: through
    its testing hook (``rd_kafka_test_fatal_error``), on the handle of confluent-kafka's Producer."""
    import ctypes
    import glob

    import confluent_kafka

    libs = glob.glob(os.path.join(os.path.dirname(confluent_kafka.__file__) + ".libs", "librdkafka-*.so*"))
    assert len(libs) == 1, libs
    lib = ctypes.CDLL(libs[0])
    lib.rd_kafka_name.argtypes, lib.rd_kafka_name.restype = [ctypes.c_void_p], ctypes.c_char_p
    lib.rd_kafka_test_fatal_error.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
    handle = producer._producer
    # confluent-kafka's Handle struct: the rd_kafka_t pointer follows PyObject_HEAD
    rk = ctypes.c_void_p.from_address(id(handle) + 16).value
    assert lib.rd_kafka_name(rk).startswith(b"rdkafka#producer-")  # the right pointer, before using it
    assert lib.rd_kafka_test_fatal_error(rk, KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, b"injected by a test") == 0


def test_a_producer_with_a_fatal_error_is_replaced_and_readiness_says_so_meanwhile(
    broker: BrokerInfo, caplog: pytest.LogCaptureFixture
) -> None:
    """librdkafka refuses every record for good after a fatal error: the gateway must not stay ready answering 503
    forever (the probe, a metadata request, still succeeds), but publish again with a new producer."""
    from gateway.metrics import GatewayMetrics
    from gateway.publisher import BrokerUnavailable, Publisher

    settings = Settings.from_env(broker.env() | {"TOPIC_PREFIX": "fatal."})

    def record(n: int) -> Any:
        return to_record(encode(build_event("charge.succeeded", object_id=f"ch_fatal_{n}")), "fatal.", 0)

    async def until(condition: Any, what: str) -> None:
        for _ in range(300):
            if condition():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting until {what}")

    async def run() -> list[bool]:
        publisher = Publisher(settings, GatewayMetrics(), probe_interval=0.2)
        await publisher.start()
        try:
            await until(lambda: publisher.ready, "ready")
            await asyncio.wait_for(publisher.publish(record(0)), timeout=30)
            failed = publisher._producer
            assert failed is not None
            # hold the replacement back (its backoff), so that the fatal producer's state is seen first
            publisher._next_replacement = float("inf")
            _inject_fatal_error(failed)
            try:  # refused, or (idempotence off, as on the embedded broker) sent before librdkafka purges it
                await asyncio.wait_for(publisher.publish(record(1)), timeout=30)
                delivered.append(1)
            except BrokerUnavailable:
                pass
            await until(lambda: failed.fatal_error is not None, "the fatal error is noted")
            readiness = [publisher.ready]
            publisher._next_replacement = 0.0
            await until(lambda: publisher._producer is not failed and publisher.ready, "a new producer is ready")
            await asyncio.wait_for(publisher.publish(record(2)), timeout=30)
            readiness.append(publisher.ready)
            return readiness
        finally:
            await publisher.stop()

    delivered: list[int] = []
    readiness = asyncio.run(run())
    assert readiness == [False, True]
    assert "the Kafka producer failed for good" in caplog.text
    expected = sorted(f"ch_fatal_{n}".encode() for n in [0, *delivered, 2])
    keys = sorted(r.key for r in consume(broker.bootstrap_servers, ["fatal.charge"], expected=len(expected)))
    assert keys == expected  # a publish that returned was stored, and nothing else


def test_records_left_at_close_fail_instead_of_waiting_forever() -> None:
    """A record still undelivered when close gives up must be told (its sender gets a 503), not left pending."""
    from ops.process import free_port

    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"})  # nothing listens
    record = to_record(encode(build_event("charge.succeeded", object_id="ch_left")), "left.", 0)

    async def run() -> tuple[int, BaseException | None]:
        producer = AsyncProducer(librdkafka_config(settings), asyncio.get_running_loop())
        delivery = producer.send(record.topic, record.value, record.key, record.headers)
        left = await producer.close(0.2)
        await asyncio.wait_for(asyncio.wait([delivery]), timeout=5)
        return left, delivery.exception()

    left, error = asyncio.run(run())
    assert left == 1
    assert isinstance(error, DeliveryFailed)


def test_a_producer_closed_right_after_a_fatal_error_closes_and_fails_what_it_held(broker: BrokerInfo) -> None:
    """librdkafka raises a fatal error once, from whichever call serves callbacks first: here the close's flush.
    It must still close, and a record sent after the error must still be told (sent or failed), not left pending."""
    settings = _with_charge_topic(Settings.from_env(broker.env() | {"TOPIC_PREFIX": "fatalclose."}))
    record = to_record(encode(build_event("charge.succeeded", object_id="ch_fatal_close")), "fatalclose.", 0)

    async def run() -> tuple[str | None, bool]:
        producer = AsyncProducer(librdkafka_config(settings), asyncio.get_running_loop())
        await asyncio.wait_for(producer.send(record.topic, record.value, record.key, record.headers), timeout=30)
        _inject_fatal_error(producer)
        try:  # idempotence off (the embedded broker): produce may still take it; on, it refuses it (_FATAL)
            after = producer.send(record.topic, record.value, record.key, record.headers)
        except DeliveryFailed:
            after = None
        await producer.close(2)  # no poll ran in between: the flush is what meets the fatal error
        if after is not None:
            await asyncio.wait([after], timeout=5)  # not raising: whether it ended is what is asserted
        return producer.fatal_error, after is None or after.done()

    fatal_error, told = asyncio.run(run())
    assert fatal_error is not None and "injected by a test" in fatal_error
    assert told

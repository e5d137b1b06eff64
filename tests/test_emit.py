"""What a handler emits: sent once the event is applied, before its state is stored, never for a failed attempt."""

from __future__ import annotations

import asyncio

import pytest

from streams.events import StripeEvent
from streams.processor import Send, StateNotStored
from streams.registry import Context, HandlerRegistry
from streams.state import ObjectState
from tests.support import ConsumedRecord, DictStore, processor


def _process(handlers: HandlerRegistry, store: DictStore, send: Send, object_id: str, attempts: int) -> str:
    """Process one ``invoice.paid`` event of ``object_id``; its outcome."""
    consumed = ConsumedRecord.of_event("invoice.paid", object_id)
    return str(asyncio.run(processor(handlers, store, send, attempts).process(consumed)))


def test_emitted_records_go_out_once_for_the_attempt_that_succeeded_and_before_the_state_is_stored() -> None:
    """Sent first, a stop or crash between the two leaves the event unapplied, to be done (and emitted) again;
    stored first, the event would be a duplicate after a restart and what it emitted lost."""
    handlers = HandlerRegistry()

    @handlers.on("invoice.paid")
    async def notify(event: StripeEvent, ctx: Context) -> None:
        ctx.emit("billing.notices", f"paid, attempt {ctx.attempt}".encode(), b"in_emit")
        ctx.fields["notified"] = True
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails after emitting")

    store = DictStore()
    sent: list[tuple[str, bytes | None, bytes, bool]] = []

    async def send(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        sent.append((topic, key, value, b"in_emit" in store))

    assert _process(handlers, store, send, "in_emit", attempts=2) == "ok"
    assert sent == [("billing.notices", b"in_emit", b"paid, attempt 2", False)]  # state not stored yet when sent
    assert b"in_emit" in store


def test_an_event_whose_new_state_cannot_be_stored_is_dead_lettered_and_emits_nothing() -> None:
    """The size of the new state is known before anything leaves: emitted records of an event that is then
    dead-lettered would announce a change the object's state never shows."""
    handlers = HandlerRegistry()

    @handlers.on("invoice.paid")
    async def bloat(event: StripeEvent, ctx: Context) -> None:
        ctx.emit("billing.notices", b"paid", b"in_big")
        ctx.fields["blob"] = "x" * 5000

    store = DictStore()
    store.max_value_bytes = 4096
    sent: list[tuple[str, list[tuple[str, bytes]]]] = []

    async def send(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        sent.append((topic, headers))

    assert _process(handlers, store, send, "in_big", attempts=3) == "dead_lettered"
    assert [topic for topic, _ in sent] == ["stripe.dlq"]  # the dead letter only: billing.notices never saw it
    dead_letter = dict(sent[0][1])
    assert dead_letter["error-type"] == b"StateTooLarge"
    assert dead_letter["attempts"] == b"1"  # not retried: no attempt can make it smaller
    assert b"in_big" not in store


def test_a_store_that_fails_after_the_emits_leaves_the_event_unfinished_not_dead_lettered() -> None:
    """A changelog batch lost (or the producer stopped) after the emits went out is the store's failure, not the
    event's: no dead letter (the event would count as dead-lettered and be applied after the restart too), and the
    error reaches the caller, which leaves the record unacknowledged: processed, and emitted, again."""
    handlers = HandlerRegistry()

    @handlers.on("invoice.paid")
    async def notify(event: StripeEvent, ctx: Context) -> None:
        ctx.emit("billing.notices", b"paid", b"in_lost")

    class FailingStore(DictStore):
        async def put(self, key: bytes, value: bytes, partition: int) -> None:
            raise RuntimeError("changelog batch not handed to the producer")

    sent: list[str] = []

    async def send(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        sent.append(topic)

    with pytest.raises(StateNotStored, match="not stored: RuntimeError"):
        _process(handlers, FailingStore(), send, "in_lost", attempts=3)
    assert sent == ["billing.notices"]  # no dead letter


def test_an_emitted_record_over_the_brokers_limit_dead_letters_its_event_and_nothing_is_sent() -> None:
    """The producer refuses such a record at every try: sent, it was retried for ever and held its object back."""
    handlers = HandlerRegistry()

    @handlers.on("invoice.paid")
    async def emits_too_much(event: StripeEvent, ctx: Context) -> None:
        ctx.emit("billing.small", b"ok", b"in_huge")
        ctx.emit("billing.exports", b"x" * (1 << 20), b"in_huge")  # the processor's limit is 1 MiB

    store = DictStore()
    sent: list[tuple[str, list[tuple[str, bytes]]]] = []

    async def send(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        sent.append((topic, headers))

    assert _process(handlers, store, send, "in_huge", attempts=3) == "dead_lettered"
    assert [topic for topic, _ in sent] == ["stripe.dlq"]  # not even the small one: the event is not applied
    dead_letter = dict(sent[0][1])
    assert dead_letter["error-type"] == b"EmitTooLarge"
    assert dead_letter["attempts"] == b"1"
    assert b"in_huge" not in store


def test_an_emit_the_brokers_refuse_for_good_dead_letters_its_event_and_a_passing_failure_is_retried() -> None:
    """Retried for ever, a record the brokers never take (no ACL for its topic) held its object and the partition's
    commits; a connection lost for a moment must not dead-letter anything. (``send`` is the worker's producer here:
    these are the errors aiokafka raises.)"""
    from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

    handlers = HandlerRegistry()

    @handlers.on("invoice.paid")
    async def notify(event: StripeEvent, ctx: Context) -> None:
        ctx.emit("billing.notices", b"paid", event.object["id"].encode())
        ctx.emit("audit.locked", b"paid", event.object["id"].encode())

    store = DictStore()
    sent: list[tuple[str, bytes]] = []
    blips = [KafkaConnectionError("connection lost")]  # once, then the broker is back

    async def send(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        if topic == "audit.locked" and key == b"in_acl":
            raise TopicAuthorizationFailedError("audit.locked")
        if topic == "billing.notices" and key == b"in_blip" and blips:
            raise blips.pop()
        sent.append((topic, dict(headers).get("error-type", b"")))

    assert _process(handlers, store, send, "in_acl", attempts=3) == "dead_lettered"
    assert sent == [("billing.notices", b""), ("stripe.dlq", b"EmitRefused")]  # the first emit went: at least once
    assert b"in_acl" not in store
    sent.clear()
    assert _process(handlers, store, send, "in_blip", attempts=3) == "ok"
    assert sent == [("billing.notices", b""), ("audit.locked", b"")]
    assert b"in_blip" in store


def test_an_emit_whose_topic_metadata_never_comes_is_retried_and_the_log_says_what_that_means(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiokafka says only "Unable to update metadata" for a topic that does not exist (auto-create off), which is
    also what brokers that are away look like: the emit waits, and the log says both."""
    from aiokafka.errors import KafkaTimeoutError

    handlers = HandlerRegistry()

    @handlers.on("invoice.paid")
    async def notify(event: StripeEvent, ctx: Context) -> None:
        ctx.emit("billing.notices", b"paid")

    store = DictStore()
    timeouts = [KafkaTimeoutError("Unable to update metadata from [0]")]
    sent: list[str] = []

    async def send(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        if timeouts:
            raise timeouts.pop()
        sent.append(topic)

    assert _process(handlers, store, send, "in_wait", attempts=1) == "ok"
    assert sent == ["billing.notices"] and b"in_wait" in store
    (line,) = [r.getMessage() for r in caplog.records if "cannot write to billing.notices" in r.getMessage()]
    assert "the topic does not exist and the brokers do not create topics, or the brokers are away or slow" in line


def test_an_emit_to_a_name_kafka_refuses_raises_in_the_handler() -> None:
    """Raised in the handler, it fails the attempt like any handler error (the processor's tests above)."""
    context = Context(ObjectState(object_id="in_1", object_type="invoice"))
    for topic in ("billing notices", "", ".", "x" * 250, "billing/notices"):
        with pytest.raises(TypeError, match="Kafka topic name"):
            context.emit(topic, b"paid")
    context.emit("billing.notices_v2-eu", b"paid")
    assert [record.topic for record in context.emitted] == ["billing.notices_v2-eu"]

"""The processor's own nets (no broker: a dict store and a recording send): a failed attempt leaves nothing
behind, a record it cannot read is dead-lettered rather than raised (raised, Faust would ack and drop it), and a
dead letter is sent however often the brokers refuse it."""

from __future__ import annotations

import asyncio

from aiokafka.errors import TopicAuthorizationFailedError

from streams.events import StripeEvent
from streams.processor import Send
from streams.registry import Context, HandlerRegistry
from streams.state import decode_state
from tests.support import ConsumedRecord, DictStore, processor


def _recording_send(sent: list[tuple[str, dict[str, bytes]]]) -> Send:
    async def send(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        sent.append((topic, dict(headers)))

    return send


def _noting_attempts(fail_first: bool) -> HandlerRegistry:
    """A handler that notes each attempt in the object's fields; with ``fail_first``, attempt 1 then fails."""
    handlers = HandlerRegistry()

    @handlers.on("invoice.paid")
    async def note(event: StripeEvent, ctx: Context) -> None:
        ctx.fields["attempts_seen"] = [*ctx.fields.get("attempts_seen", []), ctx.attempt]
        if fail_first and ctx.attempt == 1:
            raise RuntimeError("the first attempt fails after changing the state")

    return handlers


def test_a_retry_starts_from_the_stored_state_not_from_what_the_failed_attempt_changed() -> None:
    """The first attempt reuses the state decoded to judge the event; a retry must decode it afresh. Reusing it
    would keep the failed attempt's changes (the recording test handlers fail before they change anything)."""
    store = DictStore()
    sent: list[tuple[str, dict[str, bytes]]] = []
    send = _recording_send(sent)
    first = processor(_noting_attempts(fail_first=False), store, send, attempts=2)
    assert str(asyncio.run(first.process(ConsumedRecord.of_event("invoice.paid", "in_1", offset=0)))) == "ok"
    retrying = processor(_noting_attempts(fail_first=True), store, send, attempts=2)
    assert str(asyncio.run(retrying.process(ConsumedRecord.of_event("invoice.paid", "in_1", offset=1)))) == "ok"
    assert decode_state(store[b"in_1"]).fields["attempts_seen"] == [1, 2]  # not [1, 1, 2]
    assert sent == []


def test_a_stored_state_that_does_not_decode_is_dead_lettered_not_raised() -> None:
    """Past the processor's own net, an exception would reach the worker, which acks the record: neither applied
    nor dead-lettered. The net dead-letters it (no attempt was made)."""
    store = DictStore({b"in_2": b"{not a state"})
    sent: list[tuple[str, dict[str, bytes]]] = []
    processing = processor(_noting_attempts(fail_first=False), store, _recording_send(sent))
    outcome = asyncio.run(processing.process(ConsumedRecord.of_event("invoice.paid", "in_2")))
    assert str(outcome) == "dead_lettered"
    ((topic, headers),) = sent
    assert topic == "stripe.dlq" and headers["attempts"] == b"0" and headers["event-id"]
    assert store[b"in_2"] == b"{not a state"


def test_a_dead_letter_the_brokers_refuse_is_retried_not_given_up() -> None:
    """An emit the brokers refuse for good fails its event (tests/test_emit.py); a dead letter has nowhere else to
    go: given up, the record would be acked and lost."""
    handlers = HandlerRegistry()

    @handlers.on("invoice.paid")
    async def poison(event: StripeEvent, ctx: Context) -> None:
        raise RuntimeError("poison")

    refusals = [TopicAuthorizationFailedError("stripe.dlq"), TopicAuthorizationFailedError("stripe.dlq")]
    sent: list[tuple[str, bytes]] = []

    async def send(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        if refusals:
            raise refusals.pop()
        sent.append((topic, dict(headers)["attempts"]))

    processing = processor(handlers, DictStore(), send)
    assert str(asyncio.run(processing.process(ConsumedRecord.of_event("invoice.paid", "in_3")))) == "dead_lettered"
    assert sent == [("stripe.dlq", b"1")] and refusals == []

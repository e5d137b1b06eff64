"""The processor's own nets (no broker: a dict store and a recording send): a failed attempt leaves nothing
behind, a record it cannot read is dead-lettered rather than raised (raised, Faust would ack and drop it), and a
dead letter is sent however often the brokers refuse it; and what a handler registered with ``include_stale=True``
sees of an event older than its object's state."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import MessageSizeTooLargeError, TopicAuthorizationFailedError

from streams.events import StripeEvent
from streams.processor import EventProcessor, NoLongerOurs
from streams.registry import Context, HandlerRegistry
from streams.state import ObjectState, decode_state
from tests.support import ConsumedRecord, DictStore, processor, recording_send


def _outcome(processing: EventProcessor, record: ConsumedRecord) -> str:
    """How ``processing`` finished ``record`` (``ok``, ``stale``, ``dead_lettered``, ...)."""
    return str(asyncio.run(processing.process(record)))


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
    send = recording_send(sent)
    first = processor(_noting_attempts(fail_first=False), store, send, attempts=2)
    assert _outcome(first, ConsumedRecord.of_event("invoice.paid", "in_1", offset=0)) == "ok"
    retrying = processor(_noting_attempts(fail_first=True), store, send, attempts=2)
    assert _outcome(retrying, ConsumedRecord.of_event("invoice.paid", "in_1", offset=1)) == "ok"
    assert decode_state(store[b"in_1"]).fields["attempts_seen"] == [1, 2]  # not [1, 1, 2]
    assert sent == []


def test_a_stored_state_that_does_not_decode_is_dead_lettered_not_raised() -> None:
    """Past the processor's own net, an exception would reach the worker, which acks the record: neither applied
    nor dead-lettered. The net dead-letters it (no attempt was made)."""
    store = DictStore({b"in_2": b"{not a state"})
    sent: list[tuple[str, dict[str, bytes]]] = []
    processing = processor(_noting_attempts(fail_first=False), store, recording_send(sent))
    assert _outcome(processing, ConsumedRecord.of_event("invoice.paid", "in_2")) == "dead_lettered"
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
    assert _outcome(processing, ConsumedRecord.of_event("invoice.paid", "in_3")) == "dead_lettered"
    assert sent == [("stripe.dlq", b"1")] and refusals == []


@pytest.mark.parametrize("bulk", ["value", "headers"])
def test_a_dead_letter_over_the_record_limit_is_sent_without_what_makes_it_so(bulk: str) -> None:
    """A record that bypassed the gateway may fit its topic and still be too large as a dead letter, whose headers
    add to it: sent as it was, the brokers refuse it at every try (the send below refuses as they would), and its
    object and its partition's commits wait for ever. Without the value it fits; if the original headers alone
    are too large, without them too. The source position points to the original either way."""
    limit = 1 << 20  # the processor's record limit (tests.support.processor)
    handlers = HandlerRegistry()

    @handlers.on("invoice.paid")
    async def poison(event: StripeEvent, ctx: Context) -> None:
        raise RuntimeError("poison")

    record = ConsumedRecord.of_event("invoice.paid", "in_big", offset=7)
    if bulk == "value":  # under the limit, and over it with the dead letter's headers
        padding = b"x" * (limit - len(record.value or b"") - 200)
        record.value = record.value[:-1] + b',"padding":"' + padding + b'"}'  # type: ignore[index]
    else:  # the record's own headers just under the limit: over it with the dead letter's, value or not
        padding = b"x" * (limit - 100)
        record.headers = [*record.headers, ("x-padding", padding)]
        record.value = b""  # the record as a whole still fits its topic
    letters: list[tuple[bytes, list[tuple[str, bytes]]]] = []

    async def send(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        size = len(key or b"") + len(value) + sum(len(k) + len(v) for k, v in headers)
        if size > limit:
            raise MessageSizeTooLargeError()
        letters.append((value, headers))

    async def run() -> str:
        return str(await asyncio.wait_for(processor(handlers, DictStore(), send).process(record), 10))

    assert asyncio.run(run()) == "dead_lettered"
    ((value, headers),) = letters
    named = dict(headers)
    assert value == b"" and named["value-omitted"] == str(len(record.value or b"")).encode()
    assert (named["source-partition"], named["source-offset"]) == (b"0", b"7")
    assert named["error-type"] and named["error-message"]
    if bulk == "value":  # the original headers stay
        assert named["event-id"] and "headers-omitted" not in named
    else:  # but what names the event: replay --list shows it, --discard finds it
        assert "x-padding" not in named and int(named["headers-omitted"]) > len(padding)
        assert (named["event-id"], named["event-type"]) == (dict(record.headers)["event-id"], b"invoice.paid")


def test_a_handler_gets_only_the_kind_of_object_it_registered_for() -> None:
    """An event type that carries several kinds of object (``customer.source.created``: a card or a bank account,
    each on its topic) runs each kind's own handler; a kind without one is unhandled, though its topic is subscribed
    for another event type, instead of reaching the other kind's handler (and its model)."""
    handlers, seen = HandlerRegistry(), []

    @handlers.on("customer.source.created", object_type="card")
    async def card(event: StripeEvent, ctx: Context) -> None:
        seen.append(("card", event.object["object"]))

    @handlers.on("account.external_account.created", object_type="bank_account")  # subscribes stripe.bank_account
    async def external(event: StripeEvent, ctx: Context) -> None:
        seen.append(("external", event.object["object"]))

    processing = processor(handlers, DictStore(), recording_send([]))
    card_event = ConsumedRecord.of_event("customer.source.created", "card_1", object_type="card")
    bank_event = ConsumedRecord.of_event("customer.source.created", "ba_1", object_type="bank_account")
    external_event = ConsumedRecord.of_event("account.external_account.created", "ba_2", object_type="bank_account")
    assert (card_event.topic, bank_event.topic) == ("stripe.card", "stripe.bank_account")
    outcomes = [_outcome(processing, r) for r in (card_event, bank_event, external_event)]
    assert outcomes == ["ok", "unhandled", "ok"]
    assert seen == [("card", "card"), ("external", "bank_account")]


#: ``invoice.updated`` of ``in_9`` (amount 500, status void), newer than the other events of ``in_9`` below.
_NEWER_VOID = ConsumedRecord.of_event(
    "invoice.updated", "in_9", 0, created=1_800_000_010, object_fields={"amount_paid": 500, "status": "void"}
)


def test_a_record_whose_partition_moved_while_its_handler_ran_is_neither_emitted_nor_stored() -> None:
    """An actor left behind by a rebalance (its handler swallowed the worker's cancellation) finishes after the
    partition went to another worker: emitted or stored here, its state would land in the changelog after the new
    owner's, and replace them at the next recovery."""
    handlers, ours = HandlerRegistry(), [True]

    @handlers.on("invoice.paid")
    async def receipt(event: StripeEvent, ctx: Context) -> None:
        ctx.emit("receipts", event.id.encode())
        ctx.fields["paid"] = True
        ours[0] = False  # the rebalance happens while the handler runs

    sent: list[tuple[str, dict[str, bytes]]] = []
    store = DictStore()
    processing = processor(handlers, store, recording_send(sent), ours=lambda record: ours[0])
    with pytest.raises(NoLongerOurs, match="its partition went to another worker"):
        asyncio.run(processing.process(ConsumedRecord.of_event("invoice.paid", "in_5")))
    assert store == {} and sent == []

    @handlers.on("invoice.voided")  # one that fails: its dead letter would be a spurious one (the new owner runs it)
    async def fails(event: StripeEvent, ctx: Context) -> None:
        ours[0] = False
        raise RuntimeError("the receipt service is down")

    ours[0] = True
    with pytest.raises(NoLongerOurs, match="its dead letter"):
        asyncio.run(processing.process(ConsumedRecord.of_event("invoice.voided", "in_6")))
    assert store == {} and sent == []


def _stamping(include_stale: bool, failing_attempts: int = 0) -> tuple[HandlerRegistry, list[bool]]:
    """A handler that takes the snapshot's status and amount, and on ``invoice.paid`` stamps ``paid_at`` and emits;
    for a stale event only the stamp and the emit. Its first ``failing_attempts`` attempts dirty the state, then
    fail. The ``ctx.stale`` of each run is noted."""
    handlers, runs = HandlerRegistry(), []

    @handlers.on("invoice.paid", "invoice.updated", include_stale=include_stale)
    async def invoice(event: StripeEvent, ctx: Context) -> None:
        runs.append(ctx.stale)
        ctx.state.status = event.object["status"]  # what a handler may do: the worker keeps the newer one if stale
        if ctx.attempt <= failing_attempts:
            ctx.fields["dirty"] = True
            raise RuntimeError("the receipt service is down")
        if event.type == "invoice.paid":
            ctx.fields["paid_at"] = event.created
            ctx.emit("receipts", event.id.encode())
        if not ctx.stale:
            ctx.fields["amount_paid"] = event.object["amount_paid"]

    return handlers, runs


def _paid_after_a_newer_void(
    handlers: HandlerRegistry, sent: list[tuple[str, dict[str, bytes]]]
) -> tuple[DictStore, str, str]:
    """``invoice.updated`` (amount 500, status void) applied, then the older ``invoice.paid`` (status paid) twice:
    the store, and the outcomes of the paid event and of its redelivery."""
    store = DictStore()
    processing = processor(handlers, store, recording_send(sent), attempts=2)
    paid = ConsumedRecord.of_event(
        "invoice.paid", "in_9", 1, created=1_800_000_000, object_fields={"amount_paid": 400, "status": "paid"}
    )
    assert _outcome(processing, _NEWER_VOID) == "ok"
    return store, _outcome(processing, paid), _outcome(processing, paid)


def _still_the_newer_update(state: ObjectState) -> None:
    assert (state.status, state.last_event_type, state.last_event_created) == ("void", "invoice.updated", 1_800_000_010)
    assert state.events_applied == 1 and len(state.recent_event_ids) == 1


def test_a_stale_event_runs_the_handlers_that_include_stale_ones_and_the_newer_state_stays() -> None:
    """Counted stale, not applied: the status the handler set and the last event stay the newer event's, and the
    event is not remembered, so a redelivery runs the handler again (at least once, as for any event)."""
    handlers, runs = _stamping(include_stale=True)
    sent: list[tuple[str, dict[str, bytes]]] = []
    store, outcome, again = _paid_after_a_newer_void(handlers, sent)
    assert (outcome, again) == ("stale", "stale") and runs == [False, True, True]
    state = decode_state(store[b"in_9"])
    assert state.fields == {"amount_paid": 500, "paid_at": 1_800_000_000}  # the stamp kept, the newer amount too
    _still_the_newer_update(state)
    assert [topic for topic, _ in sent] == ["receipts", "receipts"]


def test_a_stale_run_that_changes_nothing_stores_nothing() -> None:
    """Most stale runs of the shipped handlers stamp nothing (their type has no stamp): no changelog record."""
    handlers, runs = _stamping(include_stale=True)
    sent: list[tuple[str, dict[str, bytes]]] = []
    store = DictStore()
    processing = processor(handlers, store, recording_send(sent))
    assert _outcome(processing, _NEWER_VOID) == "ok"
    puts = []

    async def put(key: bytes, value: bytes, partition: int) -> None:
        puts.append(key)

    store.put = put  # type: ignore[method-assign]
    older = ConsumedRecord.of_event(
        "invoice.updated", "in_9", 1, created=1_800_000_000, object_fields={"status": "void"}
    )
    assert _outcome(processing, older) == "stale"
    assert runs == [False, True] and puts == [] and sent == []


def test_a_stale_event_never_reaches_a_handler_that_does_not_include_stale_ones() -> None:
    handlers, runs = _stamping(include_stale=False)
    sent: list[tuple[str, dict[str, bytes]]] = []
    store, outcome, again = _paid_after_a_newer_void(handlers, sent)
    assert (outcome, again) == ("stale", "stale") and runs == [False] and sent == []
    state = decode_state(store[b"in_9"])
    assert state.fields == {"amount_paid": 500}
    _still_the_newer_update(state)


def test_a_stale_event_whose_handler_fails_is_retried_from_the_stored_state_then_dead_lettered() -> None:
    sent: list[tuple[str, dict[str, bytes]]] = []
    store = DictStore()
    newer, _ = _stamping(include_stale=True)
    assert _outcome(processor(newer, store, recording_send(sent)), _NEWER_VOID) == "ok"
    before = store[b"in_9"]
    paid = ConsumedRecord.of_event("invoice.paid", "in_9", 1, created=1_800_000_000, object_fields={"status": "paid"})
    failing, runs = _stamping(include_stale=True, failing_attempts=2)
    assert _outcome(processor(failing, store, recording_send(sent), attempts=2), paid) == "dead_lettered"
    assert runs == [True, True] and [topic for topic, _ in sent] == ["stripe.dlq"] and store[b"in_9"] == before
    recovering, runs = _stamping(include_stale=True, failing_attempts=1)
    assert _outcome(processor(recovering, store, recording_send(sent), attempts=2), paid) == "stale"
    state = decode_state(store[b"in_9"])
    assert runs == [True, True] and state.fields == {"amount_paid": 500, "paid_at": 1_800_000_000}  # not dirty
    _still_the_newer_update(state)

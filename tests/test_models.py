"""Handlers with a ``model``: ``data.object`` decoded into a msgspec Struct, through the real processor (no broker:
a dict store and a recording send)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

import msgspec
import pytest
from prometheus_client import generate_latest

from gateway.envelope import to_record
from ops.fixtures import build_event, encode
from streams.events import BadRecord, StripeEvent, decode_event
from streams.metrics import WorkerMetrics
from streams.registry import Context, HandlerRegistry
from streams.state import decode_state
from tests.support import ConsumedRecord, DictStore, metric_value, processor


class Charge(msgspec.Struct):
    amount: int
    currency: str
    status: str | None = None


def _charge_body(event_id: str, created: int, **fields: Any) -> bytes:
    raw = build_event("charge.succeeded", object_id="ch_1", created=created, object_fields=fields)
    raw["id"] = event_id
    return encode(raw)


def _run(
    handlers: HandlerRegistry, bodies: list[bytes], headers: dict[str, bytes | None] | None = None
) -> tuple[list[str], DictStore, list[list[tuple[str, bytes]]]]:
    store = DictStore()
    letters: list[list[tuple[str, bytes]]] = []

    async def send(topic: str, key: bytes | None, value: bytes, record_headers: list[tuple[str, bytes]]) -> None:
        letters.append(record_headers)

    processing = processor(handlers, store, send)
    outcomes = []
    for offset, body in enumerate(bodies):
        record = to_record(body, "stripe.", 0)
        record_headers = [(k, (headers or {}).get(k, v)) for k, v in record.headers]
        message = ConsumedRecord(record.topic, 0, offset, record.key, record.value, record_headers)
        outcomes.append(str(asyncio.run(processing.process(message))))
    return outcomes, store, letters


def test_decode_event_builds_the_model_and_names_a_mismatch() -> None:
    event = decode_event(_charge_body("evt_1", 1, amount=250, currency="eur"), model=Charge)
    assert event.object == Charge(amount=250, currency="eur", status="succeeded")
    with pytest.raises(
        BadRecord, match=r"object does not match Charge: Expected `int`, got `str` - at `\$.data.object.amount`"
    ):
        decode_event(_charge_body("evt_2", 1, amount="lots"), model=Charge)
    with pytest.raises(BadRecord, match="not a Stripe event"):  # the envelope's own errors stay envelope errors
        decode_event(
            b'{"id": "evt_3", "type": "charge.succeeded", "data": {"object": {"amount": 1, "currency": "usd"}}}',
            model=Charge,
        )


def test_a_model_must_be_a_struct() -> None:
    with pytest.raises(TypeError, match=r"msgspec\.Struct"):
        HandlerRegistry().on("charge.succeeded", model=dict)


def test_a_handler_with_a_model_gets_it_and_the_state_is_kept_as_with_a_dict() -> None:
    seen: list[Any] = []
    handlers = HandlerRegistry()

    @handlers.on("charge.succeeded", model=Charge)
    async def keep(event: StripeEvent[Charge], ctx: Context) -> None:
        seen.append(event.object)
        ctx.fields["amount"] = event.object.amount

    outcomes, store, letters = _run(
        handlers, [_charge_body("evt_1", 1, amount=100), _charge_body("evt_2", 2, amount=300)]
    )
    assert outcomes == ["ok", "ok"] and not letters
    assert [type(obj) for obj in seen] == [Charge, Charge]
    state = decode_state(store[b"ch_1"])
    # the model has no `object` field: the state's type comes from the registration; status from the model
    assert (state.object_type, state.status, state.fields, state.events_applied) == (
        "charge",
        "succeeded",
        {"amount": 300},
        2,
    )


def test_an_object_that_does_not_match_the_model_is_dead_lettered_with_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handlers = HandlerRegistry()

    @handlers.on("charge.succeeded", model=Charge)
    async def keep(event: StripeEvent[Charge], ctx: Context) -> None:
        ctx.fields["amount"] = event.object.amount

    outcomes, store, letters = _run(
        handlers, [_charge_body("evt_1", 1, amount=None), _charge_body("evt_2", 2, amount=7)]
    )
    assert outcomes == ["dead_lettered", "ok"]
    (letter,) = letters
    assert dict(letter)["error-type"] == b"BadRecord"
    assert b"object does not match Charge" in dict(letter)["error-message"]
    assert decode_state(store[b"ch_1"]).fields == {"amount": 7}
    # and the log says so, with the record and the reason (whoever looks at a dead-letter alert starts there)
    assert "stripe.charge[0]@0 (charge.succeeded) dead-lettered: object does not match Charge" in caplog.text


class StrictStatus(msgspec.Struct):
    status: Literal["succeeded", "failed"]


class StrictAmount(msgspec.Struct):
    amount: Literal[1, 2]


@pytest.mark.parametrize(
    ("model", "field", "value", "secret"),
    [
        (StrictStatus, "status", "card_4242_of_jane", "card_4242"),
        (StrictStatus, "status", "jane's card_4242", "card_4242"),  # repr'd in double quotes
        (StrictStatus, "status", '"jane\'s" card_4242', "card_4242"),
        (StrictAmount, "amount", 4242424242424242, "4242424242424242"),  # an int Literal: not quoted at all
    ],
)
def test_a_bad_value_msgspec_quotes_stays_out_of_the_log(
    model: type, field: str, value: Any, secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    handlers = HandlerRegistry()

    @handlers.on("charge.succeeded", model=model)
    async def keep(event: StripeEvent[Any], ctx: Context) -> None:
        ctx.fields[field] = getattr(event.object, field)

    outcomes, _, letters = _run(handlers, [_charge_body("evt_1", 1, **{field: value})])
    assert outcomes == ["dead_lettered"]
    assert secret.encode() in dict(letters[0])["error-message"]  # the dead letter keeps msgspec's reason
    assert "dead-lettered: object does not match" in caplog.text and "Invalid enum value ..." in caplog.text
    assert secret not in caplog.text


def test_an_unknown_fields_name_stays_out_of_the_log(caplog: pytest.LogCaptureFixture) -> None:
    class Closed(msgspec.Struct, forbid_unknown_fields=True):
        id: str
        object: str

    handlers = HandlerRegistry()

    @handlers.on("charge.succeeded", model=Closed)
    async def keep(event: StripeEvent[Closed], ctx: Context) -> None:
        raise AssertionError("a charge has more fields than an id")

    body = encode(
        {
            "id": "evt_1",
            "object": "event",
            "type": "charge.succeeded",
            "created": 1,
            "data": {"object": {"id": "ch_1", "object": "charge", "card_4242_of_jane": 1}},
        }
    )
    outcomes, _, letters = _run(handlers, [body])
    assert outcomes == ["dead_lettered"]
    assert b"card_4242_of_jane" in dict(letters[0])["error-message"]
    assert "unknown field ..." in caplog.text and "card_4242" not in caplog.text


def test_the_events_own_type_decides_when_the_header_says_otherwise() -> None:
    """A record whose event-type header names another (typed) handler is decoded for its real type."""
    handlers = HandlerRegistry()
    got: list[Any] = []

    @handlers.on("charge.succeeded")
    async def as_dict(event: StripeEvent, ctx: Context) -> None:
        got.append(event.object)

    @handlers.on("charge.updated", model=Charge)
    async def as_model(event: StripeEvent[Charge], ctx: Context) -> None:
        raise AssertionError("the header's handler must not run")

    outcomes, _, letters = _run(handlers, [_charge_body("evt_1", 1)], headers={"event-type": b"charge.updated"})
    assert outcomes == ["ok"] and not letters
    assert isinstance(got[0], dict) and got[0]["id"] == "ch_1"


@pytest.mark.parametrize("handled", [True, False])
def test_an_event_that_does_not_fit_the_headers_model_is_judged_by_its_own_type(handled: bool) -> None:
    """The header names a typed handler whose model the object does not fit; the event's own type decides."""
    handlers = HandlerRegistry()
    got: list[Any] = []

    @handlers.on("charge.succeeded", model=Charge)
    async def as_model(event: StripeEvent[Charge], ctx: Context) -> None:
        raise AssertionError("the header's handler must not run")

    if handled:

        @handlers.on("customer.created")
        async def as_dict(event: StripeEvent, ctx: Context) -> None:
            got.append(event.object)

    customer = encode(build_event("customer.created", object_id="cus_1", created=5))
    outcomes, _, letters = _run(handlers, [customer], headers={"event-type": b"charge.succeeded"})
    assert outcomes == (["ok"] if handled else ["unhandled"]) and not letters
    assert [obj["id"] for obj in got] == (["cus_1"] if handled else [])


def test_a_record_whose_received_at_header_is_not_a_number_is_still_applied() -> None:
    """The header only feeds the end-to-end latency metric: a producer other than the gateway may get it wrong, and
    that once raised out of the processor after the state was stored."""
    handlers = HandlerRegistry()

    @handlers.on("charge.succeeded")
    async def keep(event: StripeEvent, ctx: Context) -> None:
        ctx.fields["kept"] = True

    body = _charge_body("evt_1", 100, amount=5, currency="usd")
    outcomes, store, letters = _run(handlers, [body], {"received-at": b"soon"})
    assert outcomes == ["ok"] and letters == []
    assert decode_state(store[b"ch_1"]).fields == {"kept": True}


def test_a_replayed_events_end_to_end_time_starts_at_its_replay() -> None:
    """``hookstream replay`` adds ``replayed-at``: a dead letter replayed a day after the gateway received it is not a
    day late in the latency panel and HookstreamEndToEndSlow; an event delivered once is timed from the gateway."""
    handlers = HandlerRegistry()

    @handlers.on("charge.succeeded")
    async def keep(event: StripeEvent, ctx: Context) -> None:
        ctx.fields["kept"] = True

    async def send(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        raise AssertionError("nothing is dead-lettered")

    metrics = WorkerMetrics()
    processing = processor(handlers, DictStore(), send, metrics=metrics)
    day = 86_400.0
    received_ms = int((time.time() - day) * 1000)

    def process(offset: int, replayed_ms: int | None) -> float:
        body = _charge_body(f"evt_{offset}", 100 + offset, amount=5, currency="usd")
        record = to_record(body, "stripe.", received_ms)
        headers = [*record.headers, *([("replayed-at", b"%d" % replayed_ms)] if replayed_ms is not None else [])]
        message = ConsumedRecord(record.topic, 0, offset, record.key, record.value, headers)
        assert str(asyncio.run(processing.process(message))) == "ok"
        exposition = generate_latest(metrics.registry).decode()
        return metric_value(exposition, "hookstream_end_to_end_seconds_sum", {"topic": "stripe.charge"})

    delivered = process(0, None)
    assert day <= delivered < day + 600
    replayed = process(1, int(time.time() * 1000)) - delivered
    assert 0 <= replayed < 600


def test_headers_without_a_value_are_read_as_empty_and_the_event_still_dead_lettered() -> None:
    """Kafka allows a header with no value (aiokafka gives None), from a producer other than the gateway. Sizing its
    dead letter raised TypeError, twice (the processor's last net dead-letters too), and the record was acked with
    neither its state nor a dead letter."""
    handlers = HandlerRegistry()

    @handlers.on("charge.succeeded")
    async def broken(event: StripeEvent, ctx: Context) -> None:
        raise RuntimeError("the handler fails")

    body = _charge_body("evt_1", 100, amount=5, currency="usd")
    outcomes, store, letters = _run(handlers, [body], {"livemode": None, "received-at": None})
    assert outcomes == ["dead_lettered"] and not store
    (letter,) = letters
    assert dict(letter)["livemode"] == b"" and dict(letter)["error-type"] == b"RuntimeError"

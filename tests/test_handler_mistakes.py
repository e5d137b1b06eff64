"""A handler author's mistakes fail where they are made: at registration (the module's import, so the worker does
not start and the scaffolded test fails), or in the attempt that makes them (retried, then dead-lettered), never as
an object stuck for ever or an event silently dropped."""

from __future__ import annotations

import asyncio
import datetime
import sys
from pathlib import Path
from typing import Any

import pytest

from streams.events import StripeEvent
from streams.registry import Context, HandlerModuleError, HandlerRegistry
from streams.state import ObjectState, decode_state
from tests.support import ConsumedRecord, DictStore, processor

# --- registration ---------------------------------------------------------------------------------------------


def test_a_misspelt_event_type_is_refused_with_the_types_it_may_mean() -> None:
    """Registered, it would subscribe to the real topic and count the real events as unhandled for ever."""
    with pytest.raises(ValueError, match=r"not an event type Stripe sends \(did you mean refund\.created"):
        HandlerRegistry().on("refund.craeted")


def test_an_event_type_newer_than_the_list_needs_its_object_type() -> None:
    handlers = HandlerRegistry()
    with pytest.raises(ValueError, match="pass object_type="):
        handlers.on("refund.teleported")

    @handlers.on("refund.teleported", object_type="refund")
    async def teleported(event: StripeEvent, ctx: Context) -> None:
        pass

    registration = handlers.get("refund.teleported")
    assert registration is not None and registration.object_type == "refund"


def test_each_kind_of_object_of_an_event_type_takes_one_handler() -> None:
    """``customer.source.*`` carries a card, a bank account or a source, each on its topic: a handler per kind, but
    not two for one kind (the second would silently replace the first)."""
    handlers = HandlerRegistry()

    @handlers.on("customer.source.created", object_type="card")
    async def card(event: StripeEvent, ctx: Context) -> None:
        pass

    @handlers.on("customer.source.created", object_type="bank_account")
    async def bank_account(event: StripeEvent, ctx: Context) -> None:
        pass

    assert getattr(handlers.lookup("customer.source.created", "card"), "handler", None) is card
    assert getattr(handlers.lookup("customer.source.created", "bank_account"), "handler", None) is bank_account
    assert handlers.lookup("customer.source.created", "source") is None
    assert handlers.object_types == {"card", "bank_account"} and handlers.event_types == ["customer.source.created"]
    with pytest.raises(LookupError, match=r"a handler per kind of object \(bank_account, card\)"):
        handlers.get("customer.source.created")
    with pytest.raises(ValueError, match=r"customer\.source\.created \(card\) already has a handler: .*\.card;"):

        @handlers.on("customer.source.created", object_type="card")
        async def another_card(event: StripeEvent, ctx: Context) -> None:
            pass


def test_a_kind_of_object_a_listed_type_never_carries_is_refused() -> None:
    """Its events are on another topic: the handler would never run, silently."""
    with pytest.raises(ValueError, match=r"object_type='invoicee': invoice\.paid events carry an invoice \(did you"):
        HandlerRegistry().on("invoice.paid", object_type="invoicee")
    with pytest.raises(ValueError, match=r"'charge': customer\.source\.created events carry a bank_account, a card"):
        HandlerRegistry().on("customer.source.created", object_type="charge")
    handlers = HandlerRegistry()

    @handlers.on("invoice.paid", object_type="invoice")  # the kind it carries, said again: accepted
    async def paid(event: StripeEvent, ctx: Context) -> None:
        pass

    assert handlers.object_types == {"invoice"}


def test_a_declared_object_type_that_cannot_name_a_topic_is_refused() -> None:
    """It names the handler's topic: the worker would otherwise fail only when it asks Kafka to create it."""
    with pytest.raises(ValueError, match=r"'Payout!' is not an object type"):
        HandlerRegistry().on("payout.teleported", object_type="Payout!")


def _sync(event: StripeEvent, ctx: Context) -> None:
    pass


async def _one_argument(event: StripeEvent) -> None:
    pass


@pytest.mark.parametrize(
    ("handler", "complaint"),
    [
        (_sync, "is not a handler: write it as `async def"),
        (None, "is not a handler"),
        (_one_argument, "must take two arguments"),
    ],
)
def test_a_handler_of_the_wrong_shape_is_refused_when_registered(handler: object, complaint: str) -> None:
    """A plain function ran its body at every attempt and failed inside hookstream's machinery; one argument
    failed at every event."""
    with pytest.raises(TypeError, match=complaint):
        HandlerRegistry().on("charge.succeeded")(handler)  # type: ignore[arg-type]


def test_a_handler_behind_a_plain_decorator_is_accepted() -> None:
    """A synchronous wrapper (functools.wraps) that returns the handler's coroutine works at every event."""
    import functools

    def logged(handler: Any) -> Any:
        @functools.wraps(handler)
        def wrapper(event: StripeEvent, ctx: Context) -> Any:
            return handler(event, ctx)

        return wrapper

    handlers = HandlerRegistry()

    @handlers.on("charge.succeeded")
    @logged
    async def noted(event: StripeEvent, ctx: Context) -> None:
        ctx.fields["noted"] = True

    store = DictStore()
    assert _process(handlers, store, "ch_wrapped")[0] == "ok"
    assert decode_state(store[b"ch_wrapped"]).fields == {"noted": True}


def test_handler_modules_in_sub_packages_are_found_and_private_ones_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "acme_handlers"
    (package / "payouts").mkdir(parents=True)
    (package / "_private").mkdir()
    (package / "__init__.py").write_text("")
    (package / "payouts" / "__init__.py").write_text("")
    (package / "payouts" / "paid.py").write_text(
        "from streams.registry import on\n\n@on('payout.paid')\nasync def paid(event, ctx):\n    pass\n"
    )
    (package / "_private" / "__init__.py").write_text("raise RuntimeError('a helper package is not imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    handlers = HandlerRegistry()
    monkeypatch.setattr("streams.registry.on", handlers.on)
    try:
        handlers.discover(["acme_handlers"])
    finally:
        for name in [name for name in sys.modules if name.startswith("acme_handlers")]:
            del sys.modules[name]
    registration = handlers.get("payout.paid")
    assert registration is not None and registration.handler.__module__ == "acme_handlers.payouts.paid"


def test_a_handler_module_that_does_not_import_is_named_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_handlers.py").write_text("async def paid(event, ctx)\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(HandlerModuleError, match=r"handler module broken_handlers does not import: SyntaxError"):
            HandlerRegistry().discover(["broken_handlers"])
        with pytest.raises(HandlerModuleError, match="handler module no_such_handlers does not import"):
            HandlerRegistry().discover(["no_such_handlers"])
    finally:
        sys.modules.pop("broken_handlers", None)


def test_the_context_state_cannot_be_replaced() -> None:
    """``ctx.state = ...`` was silently dropped: what is stored is the state the context was made with. Nor does a
    context take attributes of its own (they would be lost with it), and the error says which."""
    context = Context(ObjectState(object_id="ch_1", object_type="charge"))
    with pytest.raises(AttributeError, match="'state'"):
        context.state = ObjectState(object_id="ch_2", object_type="charge")  # type: ignore[misc]
    with pytest.raises(AttributeError, match="'note'"):
        context.note = "x"  # type: ignore[attr-defined]


def test_emit_takes_any_bytes_like_value_and_keeps_bytes() -> None:
    context = Context(ObjectState(object_id="ch_1", object_type="charge"))
    context.emit("notices", bytearray(b"paid"), memoryview(b"ch_1"))
    assert (context.emitted[0].value, context.emitted[0].key) == (b"paid", b"ch_1")
    assert type(context.emitted[0].value) is bytes


# --- in the attempt -------------------------------------------------------------------------------------------


def _process(handlers: HandlerRegistry, store: DictStore, object_id: str) -> tuple[str, list[tuple[str, bytes]]]:
    """Process one ``charge.succeeded`` of ``object_id`` with 2 attempts; its outcome and what was sent."""
    sent: list[tuple[str, bytes]] = []

    async def send(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        sent.append((topic, dict(headers).get("error-message", b"")))

    processing = processor(handlers, store, send, attempts=2)
    consumed = ConsumedRecord.of_event("charge.succeeded", object_id)
    outcome = asyncio.run(asyncio.wait_for(processing.process(consumed), timeout=10))
    return str(outcome), sent


def test_an_emit_the_producer_cannot_send_fails_the_attempt_instead_of_holding_the_object() -> None:
    """A str value passed the handler and then failed the send after it, retried for ever: the object's later
    events waited behind it and nothing was committed."""
    handlers = HandlerRegistry()

    @handlers.on("charge.succeeded")
    async def notify(event: StripeEvent, ctx: Context) -> None:
        ctx.emit("billing.notices", '{"paid": true}')  # type: ignore[arg-type]

    store = DictStore()
    outcome, sent = _process(handlers, store, "ch_emit_str")
    assert outcome == "dead_lettered"
    assert sent == [("stripe.dlq", b"emit() takes the value as bytes, not str (encode it first)")]
    assert b"ch_emit_str" not in store


def test_a_state_that_would_not_read_back_is_dead_lettered_and_the_object_goes_on() -> None:
    """Stored, a status of the wrong type failed the decode of every later event of the object."""
    handlers = HandlerRegistry()

    @handlers.on("charge.succeeded")
    async def wrong_type(event: StripeEvent, ctx: Context) -> None:
        ctx.state.status = 3  # type: ignore[assignment]

    store = DictStore()
    outcome, sent = _process(handlers, store, "ch_bad_status")
    assert outcome == "dead_lettered"
    assert [topic for topic, _ in sent] == ["stripe.dlq"]
    assert b"cannot be stored" in sent[0][1] and b"$.status" in sent[0][1]
    assert b"ch_bad_status" not in store


def test_a_field_json_cannot_hold_is_dead_lettered_as_the_handlers_doing() -> None:
    class Money:
        pass

    handlers = HandlerRegistry()

    @handlers.on("charge.succeeded")
    async def keeps_an_object(event: StripeEvent, ctx: Context) -> None:
        ctx.fields["money"] = Money()

    outcome, sent = _process(handlers, DictStore(), "ch_money")
    assert outcome == "dead_lettered"
    assert b"cannot be stored" in sent[0][1] and b"Money" in sent[0][1]


def test_text_json_cannot_encode_is_dead_lettered_as_the_handlers_doing() -> None:
    """A lone surrogate (from decoding bytes with surrogateescape, say) fails the encode with a UnicodeEncodeError."""
    handlers = HandlerRegistry()

    @handlers.on("charge.succeeded")
    async def keeps_broken_text(event: StripeEvent, ctx: Context) -> None:
        ctx.fields["name"] = b"caf\xe9".decode(errors="surrogateescape")

    outcome, sent = _process(handlers, DictStore(), "ch_surrogate")
    assert outcome == "dead_lettered"
    assert b"cannot be stored" in sent[0][1]


def test_what_json_holds_differently_is_stored_as_it_reads_back() -> None:
    """A datetime is kept as its ISO text: the next event's handler sees that, as the stored state says."""
    handlers = HandlerRegistry()

    @handlers.on("charge.succeeded")
    async def keeps_a_time(event: StripeEvent, ctx: Context) -> None:
        ctx.fields["at"] = datetime.datetime(2026, 1, 2, 3, 4, 5)

    store = DictStore()
    assert _process(handlers, store, "ch_time")[0] == "ok"
    assert decode_state(store[b"ch_time"]).fields["at"] == "2026-01-02T03:04:05"


@pytest.mark.parametrize("returned", ["coroutine", "False"])
def test_a_handler_that_returns_something_fails_its_attempt(returned: str) -> None:
    """``return book()`` without ``await`` never ran book(), and the event counted as applied."""
    booked: list[str] = []

    async def book() -> None:
        booked.append("booked")

    handlers = HandlerRegistry()

    @handlers.on("charge.succeeded")
    async def forgets_await(event: StripeEvent, ctx: Context) -> None:
        return book() if returned == "coroutine" else False  # type: ignore[return-value]

    outcome, sent = _process(handlers, DictStore(), "ch_returns")
    assert outcome == "dead_lettered"
    reason = sent[0][1]
    assert (b"a missing await" in reason) if returned == "coroutine" else (b"returned bool" in reason)
    assert booked == []  # (for the coroutine case: never run, and closed, not left pending)

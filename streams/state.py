"""Per-object state and the rules that keep it right under duplicates and out-of-order delivery.

Pure functions over msgspec Structs: no Faust here, so the rules are tested directly and handlers can be
tested without a broker.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import msgspec

from streams.events import StripeEvent, object_field

#: How many applied event ids an object remembers for duplicate detection. Stripe redelivers the same event
#: (same id) on retries; a redelivery that comes after this many newer events is caught by the stale rule (and runs
#: again a handler registered with ``include_stale=True``).
RECENT_EVENT_IDS = 32


class Outcome(StrEnum):
    """What happened to an event; the ``outcome`` label of ``hookstream_events_processed_total``."""

    OK = "ok"
    DUPLICATE = "duplicate"
    STALE = "stale"
    UNHANDLED = "unhandled"
    RETRIED = "retried"
    DEAD_LETTERED = "dead_lettered"


class ObjectState(msgspec.Struct, kw_only=True):
    """What hookstream knows about one Stripe object (the value of the ``objects`` table)."""

    object_id: str
    object_type: str
    status: str | None = None
    last_event_id: str | None = None
    last_event_type: str | None = None
    last_event_created: int | None = None
    events_applied: int = 0
    fields: dict[str, Any] = msgspec.field(default_factory=dict)
    recent_event_ids: list[str] = msgspec.field(default_factory=list)
    #: the connected account of the last applied event (Connect: the events' ``account``), and whether it is live
    #: or test data (an endpoint may take both, with both secrets): what a platform needs to act on the object
    account: str | None = None
    livemode: bool | None = None
    #: the furthest step of the object's life (``LIFECYCLE``) among the events applied in the second of the last one
    second_step: int = 0


class StateTooLarge(ValueError):
    """An object's new state is too large to be stored (one changelog record): the event is dead-lettered."""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ObjectState)


class StateInvalid(ValueError):
    """A handler left a state that cannot be stored, or would not read back (a value JSON cannot hold, a field of
    the wrong type): stored, it would fail every later event of the object. The event is dead-lettered."""


def encode_state(state: ObjectState, checked: bool = False) -> bytes:
    """``state`` as stored; ``checked``: StateInvalid unless it reads back (what a handler wrote is checked)."""
    if not checked:
        return _encoder.encode(state)
    try:
        encoded = _encoder.encode(state)
        _decoder.decode(encoded)
    except (TypeError, UnicodeEncodeError, msgspec.EncodeError, msgspec.ValidationError) as exc:
        raise StateInvalid(f"the handler left a state that cannot be stored: {exc}") from None
    return encoded


def decode_state(raw: bytes) -> ObjectState:
    return _decoder.decode(raw)


def new_state(object_id: str, event: StripeEvent, object_type: str = "") -> ObjectState:
    """A first state; the object's type from the event, else ``object_type`` (a handler's model may omit it)."""
    return ObjectState(object_id=object_id, object_type=str(object_field(event.object, "object") or object_type))


#: Statuses an object of these types never leaves (Stripe's API reference; an invoice's ``deleted`` is hookstream's,
#: set by handlers/invoices.py). A payout or a refund can still fail after ``paid`` or ``succeeded``, an
#: uncollectible invoice be paid: those are left out.
FINAL_STATUSES: dict[str, frozenset[str]] = {
    "charge": frozenset({"succeeded", "failed"}),  # a refund or a dispute changes its flags, never its status
    "payment_intent": frozenset({"succeeded", "canceled"}),
    "setup_intent": frozenset({"succeeded", "canceled"}),
    "invoice": frozenset({"paid", "void", "deleted"}),
    "subscription": frozenset({"canceled", "incomplete_expired"}),
    "subscription_schedule": frozenset({"completed", "released", "canceled"}),
    "checkout.session": frozenset({"complete", "expired"}),
    "dispute": frozenset({"won", "lost", "warning_closed", "prevented"}),
    "quote": frozenset({"accepted", "canceled"}),
}


#: Where an event type comes in its object's life (Stripe's order of steps): within one second, an event of an
#: earlier step than one already applied in that second is older (whatever came between: ``invoice.updated``
#: comes with most steps). An invoice charged at once is finalized and its payment fails in the same second:
#: applied after the failure, the finalized snapshot put the attempts back to none. Only steps that never come
#: again: a payment intent's attempts do (a failed one retried at once goes back to ``requires_action`` or
#: ``processing``), so they are left to the partition's order.
LIFECYCLE: dict[str, int] = {
    "invoice.finalized": 1,
    "invoice.payment_action_required": 2,
    "invoice.payment_failed": 2,
    "invoice.payment_succeeded": 3,
    "invoice.paid": 3,
    "checkout.session.completed": 1,
    "checkout.session.async_payment_succeeded": 2,
    "checkout.session.async_payment_failed": 2,
    "checkout.session.expired": 2,
}

#: Notices about an object rather than steps of it: within a second of another event, theirs is the older snapshot.
#: Stripe sends ``trial_will_end`` at once when a trial is ended early, in the update that ends it: applied after
#: the update, it put a paying subscription back in trial.
NOTICES = frozenset({"customer.subscription.trial_will_end"})


def judge(state: ObjectState, event: StripeEvent) -> Outcome | None:
    """DUPLICATE or STALE when ``event`` must not be applied to ``state``, else None.

    ``created`` has one-second resolution, and Stripe sends an object's related events within one second
    (``customer.subscription.created`` and ``.updated``, ``invoice.finalized`` and ``.paid``) in no promised
    order. An event from the same second as the last applied one is applied, unless it shows itself older: a
    ``*.created`` event (its object existed before anything else happened to it) or a notice (``NOTICES``), one
    of an earlier step of the object's life than one applied in that second (``LIFECYCLE``: a finalized invoice
    after its failed payment), or one whose object left a status the state already shows final
    (``FINAL_STATUSES``: an open invoice after a paid one). Otherwise the partition's order decides.
    """
    if event.id in state.recent_event_ids:
        return Outcome.DUPLICATE
    last = state.last_event_created
    if last is None or event.created > last:
        return None
    if event.created < last or older_within_a_second(
        state.object_type, state.status, event.type, object_field(event.object, "status"), state.second_step
    ):
        return Outcome.STALE
    return None


def older_within_a_second(
    object_type: str, status: str | None, event_type: str, event_status: Any, reached: int = 0
) -> bool:
    """Whether an event from the same second as the last applied one shows itself older (``judge``), given the
    object's type and status in the state, the event's type and its object's status, and the furthest step of the
    object's life applied in that second (``hookstream audit`` applies the same rule)."""
    if event_type.endswith(".created") or event_type in NOTICES:
        return True
    step = LIFECYCLE.get(event_type)
    if step is not None and step < reached:
        return True
    final = FINAL_STATUSES.get(object_type)
    if final is None or status not in final:
        return False
    return isinstance(event_status, str) and event_status != status


def start_applying(state: ObjectState, event: StripeEvent) -> None:
    """Take what every event says about its object (its status, account, live or test) before the handler runs;
    handlers may override."""
    status = object_field(event.object, "status")
    if isinstance(status, str):
        state.status = status
    state.account = event.account
    state.livemode = event.livemode


def record_applied(state: ObjectState, event: StripeEvent) -> None:
    """Note ``event`` as the last one applied (after its handler succeeded)."""
    step = LIFECYCLE.get(event.type, 0)
    state.second_step = max(state.second_step, step) if event.created == state.last_event_created else step
    state.last_event_id = event.id
    state.last_event_type = event.type
    state.last_event_created = event.created
    state.events_applied += 1
    recent = state.recent_event_ids
    recent.append(event.id)
    if len(recent) > RECENT_EVENT_IDS:
        del recent[: len(recent) - RECENT_EVENT_IDS]

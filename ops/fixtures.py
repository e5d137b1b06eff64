"""Realistic Stripe events built from Stripe's own example objects (``ops/stripe/``, MIT, from stripe/openapi).

Used by ``hookstream trigger``, the tests and the benchmarks, so all of them send what Stripe sends.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import re
import secrets
import time
from importlib import resources
from typing import Any

#: The API version built events say they have: that of the ``stripe`` package the event types were listed from
#: (16.1.0, ``ops/stripe/README.md``). Stripe's example event has none, and Stripe always sends one.
API_VERSION = "2026-10-28.endive"

#: Event types whose object's fixture cannot be found from the type's name.
_ALIASES = {"application_fee.refund": "fee_refund", "source.transaction": "source_transaction"}


#: The object's status after these events, so that a built event's snapshot agrees with its type (Stripe's
#: example objects each have one fixed status).
_STATUS_AFTER = {
    "payment_intent.succeeded": "succeeded",
    "payment_intent.canceled": "canceled",
    "payment_intent.processing": "processing",
    "payment_intent.requires_action": "requires_action",
    "payment_intent.payment_failed": "requires_payment_method",
    "payment_intent.amount_capturable_updated": "requires_capture",
    "charge.succeeded": "succeeded",
    "charge.captured": "succeeded",
    "charge.failed": "failed",
    "charge.pending": "pending",
    "invoice.created": "draft",
    "invoice.finalized": "open",
    "invoice.paid": "paid",
    "invoice.payment_succeeded": "paid",
    "invoice.voided": "void",
    "invoice.marked_uncollectible": "uncollectible",
    "customer.subscription.deleted": "canceled",
    "customer.subscription.paused": "paused",
    "customer.subscription.resumed": "active",
    "checkout.session.completed": "complete",
    "checkout.session.expired": "expired",
}


#: Event types whose object Stripe sends without an id (it does not exist yet): their records are keyed by the event
#: id, as the gateway keys them.
_WITHOUT_ID = frozenset({"invoice.upcoming"})


#: Event types whose events carry one of several kinds of object (Stripe's API reference); their example object is
#: one of them. A handler of another of them declares it (``@on(..., object_type="card")``): it names the topic.
_SEVERAL_OBJECTS = {
    "customer.source": frozenset({"card", "bank_account", "source"}),
    "account.external_account": frozenset({"card", "bank_account"}),
}


def carried_object_types(event_type: str) -> frozenset[str]:
    """The kinds of object events of ``event_type`` may carry, when Stripe sends several (else empty)."""
    return _SEVERAL_OBJECTS.get(event_type.rsplit(".", 1)[0], frozenset())


def wrong_kind(event_type: str, object_type: str) -> str | None:
    """Why ``object_type`` is not a kind of object that events of ``event_type`` carry (their example object's, or
    one of several where Stripe sends several), with a near match; None if it is, or if hookstream cannot tell (a
    type newer than its list, or one without an example object)."""
    if event_type not in event_types():
        return None
    try:
        kinds = carried_object_types(event_type) | {str(fixture_for(event_type)["object"])}
    except UnknownEventType:
        return None
    if object_type in kinds:
        return None
    named = [f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}" for kind in sorted(kinds)]
    carried = named[0] if len(named) == 1 else f"{', '.join(named[:-1])} or {named[-1]}"
    close = difflib.get_close_matches(object_type, sorted(kinds), n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{object_type!r}: {event_type} events carry {carried}{hint}"


def example_object(object_type: str) -> dict[str, Any] | None:
    """A fresh copy of Stripe's example ``object_type``, if there is one."""
    found = _resources().get(object_type)
    return copy.deepcopy(found) if found is not None else None


class UnknownEventType(LookupError):
    """No Stripe fixture holds the object this event type carries."""


@functools.cache
def _resources() -> dict[str, dict[str, Any]]:
    text = resources.files("ops").joinpath("stripe", "fixtures3.json").read_text(encoding="utf-8")
    loaded: dict[str, dict[str, Any]] = json.loads(text)["resources"]
    return loaded


@functools.cache
def event_types() -> tuple[str, ...]:
    """The event types a Stripe webhook endpoint can subscribe to."""
    text = resources.files("ops").joinpath("stripe", "event-types.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def not_an_event_type(event_type: str) -> str:
    """Why ``event_type`` is refused, with the listed types it may be a typo of."""
    close = difflib.get_close_matches(event_type, event_types(), n=3)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return f"{event_type!r} is not an event type Stripe sends{hint}"


#: What ``data.object.object`` looks like (``payout``, ``checkout.session``); it names a topic.
_OBJECT_TYPE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")


def checked_object_type(name: str) -> str:
    """``name``, or ValueError if it cannot be an object type (a declared one: it names the handler's topic)."""
    if not _OBJECT_TYPE.fullmatch(name):
        raise ValueError(f"{name!r} is not an object type (like payout or checkout.session)")
    return name


def fixture_for(event_type: str) -> dict[str, Any]:
    """A fresh copy of the example object that events of ``event_type`` carry."""
    parts = event_type.split(".")
    prefix = ".".join(parts[:-1])
    candidates = [_ALIASES.get(prefix), prefix, prefix.replace("_", ".", 1)]
    if len(parts) > 2:  # customer.subscription.updated -> subscription, charge.dispute.created -> dispute
        candidates += [parts[-2], ".".join(parts[-3:-1])]
    for name in candidates:
        found = example_object(name) if name else None
        if found is not None:
            return found
    raise UnknownEventType(f"no Stripe example object for event type {event_type!r}")


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(12)


def build_event(
    event_type: str,
    *,
    object_id: str | None = None,
    event_id: str | None = None,
    created: int | None = None,
    object_fields: dict[str, Any] | None = None,
    account: str | None = None,
    object_type: str | None = None,
) -> dict[str, Any]:
    """A Stripe event of ``event_type`` around the fixture object (Stripe's example ``object_type`` for a type
    whose events carry several kinds of object), with the given ids and time."""
    obj = fixture_for(event_type) if object_type is None else example_object(object_type)
    if obj is None:
        raise UnknownEventType(f"no Stripe example object {object_type!r}")
    if event_type in _STATUS_AFTER and "status" in obj and object_type is None:
        obj["status"] = _STATUS_AFTER[event_type]
    if object_id is not None:
        obj["id"] = object_id
    elif event_type in _WITHOUT_ID:
        obj.pop("id", None)
    if object_fields:
        obj.update(object_fields)
    event = copy.deepcopy(_resources()["event"])
    event.update(
        id=event_id or new_event_id(),
        type=event_type,
        created=int(time.time()) if created is None else created,
        data={"object": obj},
        api_version=API_VERSION,
    )
    if account is not None:
        event["account"] = account
    return event


def encode(event: dict[str, Any]) -> bytes:
    """Serialise an event the way Stripe does (pretty-printed JSON)."""
    return json.dumps(event, indent=2).encode("utf-8")

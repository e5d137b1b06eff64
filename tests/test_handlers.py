"""The shipped handlers (``handlers/``): which event types each family takes, and what it keeps.

Events are built from Stripe's example objects and run through the registered handler the way a worker does
(``new_state``, ``start_applying``, handler), without a broker.
"""

from __future__ import annotations

import asyncio
import importlib
import json
from typing import Any

import pytest

from ops.fixtures import build_event, encode, event_types, fixture_for
from streams.events import StripeEvent, decode_event
from streams.registry import Context, registry
from streams.state import ObjectState, decode_state, new_state, record_applied, start_applying
from tests.support import ConsumedRecord, DictStore, processor, recording_send

registry.discover()  # the shipped handlers (the default)

T0 = 1_750_000_000


def _family(event_type: str) -> str | None:
    """The handler module that must take ``event_type``, or None when no shipped handler may."""
    if event_type.startswith("charge.dispute."):
        return "handlers.disputes"
    if event_type in ("charge.refund.updated", "invoice.upcoming"):  # no id: a state per event (handlers/invoices.py)
        return None
    prefixes = {
        "payment_intent.": "handlers.payments",
        "charge.": "handlers.payments",
        "customer.subscription.": "handlers.subscriptions",
        "invoice.": "handlers.invoices",
        "checkout.session.": "handlers.checkout",
    }
    return next((module for prefix, module in prefixes.items() if event_type.startswith(prefix)), None)


FAMILY_TYPES = [t for t in event_types() if _family(t) is not None]


def _event(event_type: str, object_id: str, created: int, **object_fields: Any) -> StripeEvent:
    raw = build_event(event_type, object_id=object_id, created=created, object_fields=object_fields)
    return decode_event(encode(raw))  # what the worker decodes from the record


def apply(event: StripeEvent, state: ObjectState | None = None) -> ObjectState:
    """Apply ``event`` as the worker does; the state must stay JSON (it is stored and served as JSON)."""
    registration = registry.get(event.type)
    assert registration is not None, f"no handler for {event.type}"
    if state is None:
        state = new_state(str(event.object["id"]), event)
    start_applying(state, event)
    asyncio.run(asyncio.wait_for(registration.handler(event, Context(state)), timeout=5))
    record_applied(state, event)
    assert json.loads(json.dumps(state.fields)) == state.fields
    return state


# -- which types each family takes


def test_every_shipped_type_of_the_families_has_its_family_handler() -> None:
    assert len(FAMILY_TYPES) == 8 + 7 + 5 + 8 + 16 + 4
    assert registry.get("invoice.upcoming") is None
    for event_type in FAMILY_TYPES:
        registration = registry.get(event_type)
        assert registration is not None, event_type
        assert registration.handler.__module__ == _family(event_type), event_type


def test_refund_and_dispute_events_are_not_taken_as_charges() -> None:
    assert registry.get("charge.refund.updated") is None
    disputes = [t for t in event_types() if t.startswith("charge.dispute.")]
    assert len(disputes) == 5
    for event_type in disputes:
        registration = registry.get(event_type)
        assert registration is not None and registration.handler.__module__ == "handlers.disputes"


def test_shipped_handlers_take_only_real_types_with_the_fixtures_object() -> None:
    """Only the shipped modules: a user's own handler module in handlers/ (README, "Add an event type") is
    registered too, and must not fail the suite."""
    families = {_family(t) for t in FAMILY_TYPES}
    shipped = [r for t in registry.event_types if (r := registry.get(t)) and r.handler.__module__ in families]
    assert {r.event_type for r in shipped} == set(FAMILY_TYPES)
    for registration in shipped:
        assert registration.object_type == fixture_for(registration.event_type)["object"], registration.event_type
    objects = {r.event_type: r.object_type for r in shipped}
    assert objects["charge.succeeded"] == "charge"
    assert objects["charge.dispute.created"] == "dispute"
    assert objects["customer.subscription.updated"] == "subscription"
    assert objects["checkout.session.completed"] == "checkout.session"


@pytest.mark.parametrize("event_type", FAMILY_TYPES)
def test_every_handler_takes_its_fixture_and_a_bare_object(event_type: str) -> None:
    state = apply(_event(event_type, "obj_full", T0))
    stamp = next((name for stamped, name, _ in STAMPED if stamped == event_type), None)
    if stamp is not None:  # its type's time stamp, at the event's time
        assert state.fields[stamp] == T0, (event_type, stamp)
    assert state.fields and state.object_type == registry.get(event_type).object_type  # type: ignore[union-attr]
    # an object with almost nothing in it (an older API version, a trimmed payload): .get() everywhere
    bare = decode_event(
        json.dumps(
            {"id": "evt_bare", "type": event_type, "created": T0, "data": {"object": {"id": "obj_bare"}}}
        ).encode()
    )
    assert apply(bare).fields


# -- payments


def test_payment_intent_failure_then_success() -> None:
    failed = _event(
        "payment_intent.payment_failed",
        "pi_1",
        T0,
        status="requires_payment_method",
        amount=2599,
        currency="eur",
        customer="cus_9",
        last_payment_error={"code": "card_declined", "decline_code": "insufficient_funds", "message": "Declined"},
    )
    state = apply(failed)
    assert state.object_type == "payment_intent"
    assert state.status == "requires_payment_method"
    assert state.fields["amount"] == 2599
    assert state.fields["currency"] == "eur"
    assert state.fields["customer"] == "cus_9"
    assert state.fields["last_payment_error_code"] == "card_declined"
    assert state.fields["last_payment_error_decline_code"] == "insufficient_funds"
    assert state.fields["last_payment_error_message"] == "Declined"
    assert state.fields["failed_at"] == T0
    assert "succeeded_at" not in state.fields

    succeeded = _event(
        "payment_intent.succeeded",
        "pi_1",
        T0 + 60,
        status="succeeded",
        amount=2599,
        amount_received=2599,
        latest_charge={"id": "ch_7", "object": "charge"},  # expanded: kept as its id
        last_payment_error=None,
    )
    apply(succeeded, state)
    assert state.status == "succeeded"
    assert state.fields["amount_received"] == 2599
    assert state.fields["latest_charge"] == "ch_7"
    assert state.fields["succeeded_at"] == T0 + 60
    assert state.fields["failed_at"] == T0  # history stays
    assert state.fields["last_payment_error_code"] is None  # Stripe cleared it


def test_the_latest_charge_of_a_payment_intent_in_older_api_versions() -> None:
    """Before 2022-11-15 a payment intent lists its charges (newest first) instead of naming the latest."""
    older = _event("payment_intent.succeeded", "pi_9", T0, status="succeeded")
    del older.object["latest_charge"]
    older.object["charges"] = {"object": "list", "data": [{"id": "ch_new", "object": "charge"}, {"id": "ch_old"}]}
    assert apply(older).fields["latest_charge"] == "ch_new"
    none_yet = _event("payment_intent.created", "pi_9", T0, status="requires_payment_method")
    del none_yet.object["latest_charge"]
    none_yet.object["charges"] = {"object": "list", "data": []}
    assert apply(none_yet).fields["latest_charge"] is None


def test_payment_intent_fixture_values_are_kept() -> None:
    fixture = fixture_for("payment_intent.canceled")
    state = apply(_event("payment_intent.canceled", "pi_2", T0, status="canceled", cancellation_reason="abandoned"))
    assert state.status == "canceled"
    assert state.fields["amount"] == fixture["amount"] == 1099
    assert state.fields["canceled_at"] == fixture["canceled_at"]
    assert state.fields["cancellation_reason"] == "abandoned"
    assert state.fields["capture_method"] == "automatic"


def test_charge_failed_keeps_failure_code_and_message() -> None:
    state = apply(
        _event(
            "charge.failed",
            "ch_1",
            T0,
            status="failed",
            paid=False,
            failure_code="expired_card",
            failure_message="Your card has expired.",
            payment_intent="pi_1",
        )
    )
    assert state.object_type == "charge"
    assert state.status == "failed"
    assert state.fields["failure_code"] == "expired_card"
    assert state.fields["failure_message"] == "Your card has expired."
    assert state.fields["payment_intent"] == "pi_1"
    assert state.fields["paid"] is False
    assert state.fields["failed_at"] == T0


def test_charge_captured_then_refunded() -> None:
    state = apply(_event("charge.captured", "ch_2", T0, amount=5000, amount_captured=5000, captured=True))
    assert state.status == fixture_for("charge.captured")["status"] == "succeeded"
    assert state.fields["amount"] == 5000
    assert state.fields["amount_captured"] == 5000
    assert state.fields["captured"] is True
    assert state.fields["captured_at"] == T0
    refunded = _event(
        "charge.refunded", "ch_2", T0 + 5, amount=5000, amount_captured=5000, amount_refunded=1500, refunded=False
    )
    apply(refunded, state)
    assert state.fields["amount_refunded"] == 1500
    assert state.fields["refunded"] is False  # partially refunded
    assert state.fields["refunded_at"] == T0 + 5
    assert state.fields["captured_at"] == T0


# -- subscriptions


def test_subscription_period_from_items_when_the_subscription_has_none() -> None:
    fixture = fixture_for("customer.subscription.updated")
    assert "current_period_start" not in fixture  # the fixture has the newer API's shape
    item = fixture["items"]["data"][0]
    state = apply(_event("customer.subscription.updated", "sub_1", T0))
    assert state.object_type == "subscription"
    assert state.status == "active"
    assert state.fields["current_period_start"] == item["current_period_start"]
    assert state.fields["current_period_end"] == item["current_period_end"]
    assert state.fields["customer"] == "cus_QXg1o8vcGmoR32"
    assert state.fields["items"] == [{"price": item["price"]["id"], "quantity": 1}]
    assert state.fields["cancel_at_period_end"] is True
    assert state.fields["trial_end"] == fixture["trial_end"]
    assert state.fields["pending_update_expires_at"] == fixture["pending_update"]["expires_at"]


def test_subscription_period_from_the_subscription_in_older_api_versions() -> None:
    state = apply(
        _event(
            "customer.subscription.created",
            "sub_2",
            T0,
            current_period_start=1_700_000_000,
            current_period_end=1_702_592_000,
            latest_invoice="in_5",
            cancel_at=None,
            cancel_at_period_end=False,
        )
    )
    assert state.fields["current_period_start"] == 1_700_000_000
    assert state.fields["current_period_end"] == 1_702_592_000
    assert state.fields["latest_invoice"] == "in_5"
    assert state.fields["cancel_at"] is None
    assert state.fields["cancel_at_period_end"] is False


def test_subscription_trial_notice_and_deletion() -> None:
    state = apply(
        _event("customer.subscription.trial_will_end", "sub_3", T0, status="trialing", trial_end=T0 + 3 * 86400)
    )
    assert state.status == "trialing"
    assert state.fields["trial_end"] == T0 + 3 * 86400
    assert state.fields["trial_will_end_notified_at"] == T0

    # the fixture says "active" and has an ended_at: deletion still means canceled, and ended_at falls back
    apply(_event("customer.subscription.deleted", "sub_3", T0 + 10, ended_at=None, canceled_at=T0 + 9), state)
    assert state.status == "canceled"
    assert state.fields["ended_at"] == T0 + 10
    assert state.fields["canceled_at"] == T0 + 9
    assert state.fields["deleted_at"] == T0 + 10
    assert state.fields["trial_will_end_notified_at"] == T0
    # one that never started, its first invoice unpaid: not counted as a cancellation (churn)
    expired = apply(_event("customer.subscription.deleted", "sub_4", T0, status="incomplete_expired"))
    assert expired.status == "incomplete_expired"


# -- invoices


def test_invoice_payment_failed_then_paid() -> None:
    failed = _event(
        "invoice.payment_failed",
        "in_1",
        T0,
        status="open",
        amount_due=4200,
        amount_paid=0,
        amount_remaining=4200,
        attempt_count=2,
        attempted=True,
        next_payment_attempt=T0 + 86400,
    )
    state = apply(failed)
    assert state.object_type == "invoice"
    assert state.status == "open"
    assert state.fields["amount_due"] == 4200
    assert state.fields["amount_remaining"] == 4200
    assert state.fields["attempt_count"] == 2
    assert state.fields["attempted"] is True
    assert state.fields["next_payment_attempt"] == T0 + 86400
    assert state.fields["payment_failed_at"] == T0
    assert "paid_at" not in state.fields

    paid = _event(
        "invoice.paid",
        "in_1",
        T0 + 86400,
        status="paid",
        amount_due=4200,
        amount_paid=4200,
        amount_remaining=0,
        attempt_count=3,
        next_payment_attempt=None,
    )
    apply(paid, state)
    assert state.status == "paid"
    assert state.fields["amount_paid"] == 4200
    assert state.fields["amount_remaining"] == 0
    assert state.fields["attempt_count"] == 3
    assert state.fields["next_payment_attempt"] is None
    assert state.fields["paid_at"] == T0 + 86400
    assert state.fields["payment_failed_at"] == T0


def _stamps(module: str) -> dict[str, str]:
    """A family's time stamps: event type -> the field it sets to the event's time."""
    return dict(importlib.import_module(f"handlers.{module}")._STAMPS)


STAMPED = [
    (event_type, name, module)
    for module in ("payments", "subscriptions", "invoices", "checkout", "disputes")
    for event_type, name in _stamps(module).items()
]


@pytest.mark.parametrize(("event_type", "name", "module"), STAMPED, ids=[t for t, _, _ in STAMPED])
def test_an_event_delivered_after_a_newer_one_still_stamps_when_it_happened(
    event_type: str, name: str, module: str
) -> None:
    """Stripe does not promise order. Run by the worker's processor: an event delivered after a newer one of its
    object is stale; the shipped handler still stamps its time, and keeps nothing of its older snapshot."""
    registration = registry.get(event_type)
    assert registration is not None and registration.include_stale, f"{event_type}: include_stale=True"
    stamps = _stamps(module)
    same_handler = [t for t in FAMILY_TYPES if getattr(registry.get(t), "handler", None) is registration.handler]
    newer_type = next(t for t in same_handler if stamps.get(t) != name)
    store, sent = DictStore(), []  # what was sent: nothing (no emits, no dead letters)

    def deliver(event_type: str, created: int, **fields: Any) -> str:
        record = ConsumedRecord.of_event(event_type, "obj_late", created=created, object_fields=fields)
        return str(asyncio.run(processor(registry, store, recording_send(sent)).process(record)))

    assert deliver(newer_type, T0 + 100) == "ok"
    before = decode_state(store[b"obj_late"])
    assert deliver(event_type, T0, currency="zzz", status="stale_status") == "stale"
    after = decode_state(store[b"obj_late"])
    assert after.fields.pop(name) == T0 and name not in before.fields
    assert after == before and sent == []  # the newer snapshot's fields, status and last event


def test_a_stamp_keeps_the_later_of_two_times() -> None:
    """Two payment failures delivered in reverse (the second stale) keep the later one's time."""
    store, sent = DictStore(), []  # what was sent: nothing (no emits, no dead letters)

    def deliver(created: int, attempt_count: int) -> str:
        record = ConsumedRecord.of_event(
            "invoice.payment_failed", "in_late", created=created, object_fields={"attempt_count": attempt_count}
        )
        return str(asyncio.run(processor(registry, store, recording_send(sent)).process(record)))

    assert (deliver(T0 + 5, 2), deliver(T0, 1)) == ("ok", "stale")
    state = decode_state(store[b"in_late"])
    assert state.fields["payment_failed_at"] == T0 + 5 and state.fields["attempt_count"] == 2 and sent == []


def test_invoice_fixture_values_and_subscription_from_either_api_shape() -> None:
    fixture = fixture_for("invoice.finalized")
    state = apply(_event("invoice.finalized", "in_2", T0, subscription=None))
    assert state.fields["customer"] == fixture["customer"] == "cus_QXg1o8vcGmoR32"
    assert state.fields["currency"] == "usd"
    assert state.fields["total"] == fixture["total"]
    assert state.fields["period_start"] == fixture["period_start"]
    assert state.fields["billing_reason"] == "manual"
    assert state.fields["subscription"] == fixture["parent"]["subscription_details"]["subscription"]
    assert state.fields["finalized_at"] == T0

    older = apply(_event("invoice.updated", "in_3", T0, subscription="sub_old"))
    assert older.fields["subscription"] == "sub_old"


def test_invoice_finalization_failure_and_deletion() -> None:
    state = apply(
        _event(
            "invoice.finalization_failed",
            "in_4",
            T0,
            last_finalization_error={"code": "customer_tax_location_invalid", "message": "No address"},
        )
    )
    assert state.fields["last_finalization_error_code"] == "customer_tax_location_invalid"
    assert state.fields["last_finalization_error_message"] == "No address"
    apply(_event("invoice.deleted", "in_4", T0 + 1, status="draft"), state)
    assert state.status == "deleted"
    assert state.fields["deleted_at"] == T0 + 1


def test_invoice_voided() -> None:
    state = apply(_event("invoice.voided", "in_5", T0, status="void"))
    assert state.status == "void"
    assert state.fields["voided_at"] == T0


# -- disputes


def test_dispute_keeps_reason_amount_charge_and_evidence_due_by() -> None:
    fixture = fixture_for("charge.dispute.created")
    state = apply(_event("charge.dispute.created", "dp_1", T0, amount=7500, reason="fraudulent"))
    assert state.object_type == "dispute"
    assert state.status == "warning_needs_response"
    assert state.fields["amount"] == 7500
    assert state.fields["reason"] == "fraudulent"
    assert state.fields["charge"] == fixture["charge"] == "ch_1PgafuB7WZ01zgkWXYmPNZs8"
    assert state.fields["evidence_due_by"] == fixture["evidence_details"]["due_by"] == 1723679999
    assert state.fields["has_evidence"] is False
    assert state.fields["opened_at"] == T0

    closed = _event(
        "charge.dispute.closed",
        "dp_1",
        T0 + 100,
        status="won",
        evidence_details={"due_by": 1723679999, "has_evidence": True, "past_due": False, "submission_count": 1},
    )
    apply(closed, state)
    assert state.status == "won"
    assert state.fields["has_evidence"] is True
    assert state.fields["evidence_submission_count"] == 1
    assert state.fields["closed_at"] == T0 + 100


def test_dispute_funds_withdrawn() -> None:
    state = apply(_event("charge.dispute.funds_withdrawn", "dp_2", T0, status="needs_response"))
    assert state.status == "needs_response"
    assert state.fields["funds_withdrawn_at"] == T0


# -- checkout


def test_checkout_completed_keeps_payment_status_and_what_it_created() -> None:
    state = apply(
        _event(
            "checkout.session.completed",
            "cs_1",
            T0,
            status="complete",
            payment_status="paid",
            amount_total=1999,
            currency="gbp",
            customer="cus_4",
            client_reference_id="order-17",
        )
    )
    assert state.object_type == "checkout.session"
    assert state.status == "complete"
    assert state.fields["payment_status"] == "paid"
    assert state.fields["amount_total"] == 1999
    assert state.fields["currency"] == "gbp"
    assert state.fields["customer"] == "cus_4"
    assert state.fields["client_reference_id"] == "order-17"
    assert state.fields["payment_intent"] == fixture_for("checkout.session.completed")["payment_intent"]
    assert state.fields["customer_email"] == "example@example.com"
    assert state.fields["completed_at"] == T0


def test_checkout_async_payment_failed_and_expired() -> None:
    state = apply(_event("checkout.session.async_payment_failed", "cs_2", T0, payment_status="unpaid"))
    assert state.fields["payment_status"] == "unpaid"
    assert state.fields["payment_failed_at"] == T0
    apply(_event("checkout.session.expired", "cs_2", T0 + 1, status="expired"), state)
    assert state.status == "expired"
    assert state.fields["expired_at"] == T0 + 1
    assert state.fields["payment_failed_at"] == T0

"""Payment intents and charges: what a payment is, where it stands and, when it failed, why.

Kept for a payment intent: amounts (asked, capturable, received), currency, customer, the latest charge (from its
list of charges in API versions before 2022-11-15), the cancellation, and the last payment error's code, decline
code and message (Stripe clears it on success, and so does the next snapshot). For a charge: amount, captured and
refunded amounts, the captured/refunded/disputed flags, the payment intent it belongs to, and its failure code and
message. Each also keeps when it succeeded, failed, was captured, refunded or expired (the ``created`` of that
event), which the snapshots do not say. Refunds (``charge.refund.updated``, ``refund.*``) and disputes
(``charge.dispute.*``) carry other objects: not here; a refund that fails after ``charge.refunded`` shows only in
its refund's events (a handler of its own).
"""

from __future__ import annotations

from handlers._common import keep, on_stamped, ref
from streams.events import StripeEvent
from streams.registry import Context

PAYMENT_INTENT_EVENTS = (
    "payment_intent.amount_capturable_updated",
    "payment_intent.canceled",
    "payment_intent.created",
    "payment_intent.partially_funded",
    "payment_intent.payment_failed",
    "payment_intent.processing",
    "payment_intent.requires_action",
    "payment_intent.succeeded",
)

CHARGE_EVENTS = (
    "charge.captured",
    "charge.expired",
    "charge.failed",
    "charge.pending",
    "charge.refunded",
    "charge.succeeded",
    "charge.updated",
)

_STAMPS = {
    "payment_intent.succeeded": "succeeded_at",
    "payment_intent.payment_failed": "failed_at",
    "charge.succeeded": "succeeded_at",
    "charge.failed": "failed_at",
    "charge.captured": "captured_at",
    "charge.refunded": "refunded_at",
    "charge.expired": "expired_at",
}


@on_stamped(*PAYMENT_INTENT_EVENTS, stamps=_STAMPS)
async def payment_intent_changed(event: StripeEvent, ctx: Context) -> None:
    obj = event.object
    keep(ctx, obj, "amount", "amount_capturable", "amount_received", "currency", "customer", "latest_charge")
    if "latest_charge" not in obj:  # API versions before 2022-11-15: its charges, the newest first
        charges = obj.get("charges")
        listed = charges.get("data") if isinstance(charges, dict) else None
        ctx.fields["latest_charge"] = ref(listed[0]) if isinstance(listed, list) and listed else None
    keep(ctx, obj, "capture_method", "canceled_at", "cancellation_reason")
    error = obj.get("last_payment_error") or {}
    ctx.fields["last_payment_error_code"] = error.get("code")
    ctx.fields["last_payment_error_decline_code"] = error.get("decline_code")
    ctx.fields["last_payment_error_message"] = error.get("message")


@on_stamped(*CHARGE_EVENTS, stamps=_STAMPS)
async def charge_changed(event: StripeEvent, ctx: Context) -> None:
    obj = event.object
    keep(ctx, obj, "amount", "amount_captured", "amount_refunded", "currency", "customer", "payment_intent")
    keep(ctx, obj, "paid", "captured", "refunded", "disputed", "failure_code", "failure_message")
    outcome = obj.get("outcome") or {}
    ctx.fields["outcome_type"] = outcome.get("type")
    ctx.fields["outcome_reason"] = outcome.get("reason")

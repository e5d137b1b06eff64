"""Checkout sessions: whether the customer paid, how much, and what the session created.

Kept: the payment status (``paid``, ``unpaid``, ``no_payment_required``: the session's ``status`` says only
whether it is open, complete or expired), mode, amounts (subtotal, total), currency, the customer and their
email, ``client_reference_id`` (how a session is matched to an order), the payment intent, subscription and
invoice it created, and when it expires. Completion, expiry and the outcome of a delayed payment are stamped
with the event's time.
"""

from __future__ import annotations

from handlers._common import keep, on_stamped
from streams.events import StripeEvent
from streams.registry import Context

CHECKOUT_EVENTS = (
    "checkout.session.async_payment_failed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.completed",
    "checkout.session.expired",
)

_STAMPS = {
    "checkout.session.completed": "completed_at",
    "checkout.session.expired": "expired_at",
    "checkout.session.async_payment_succeeded": "payment_succeeded_at",
    "checkout.session.async_payment_failed": "payment_failed_at",
}


@on_stamped(*CHECKOUT_EVENTS, stamps=_STAMPS)
async def checkout_session_changed(event: StripeEvent, ctx: Context) -> None:
    obj = event.object
    keep(ctx, obj, "payment_status", "mode", "amount_subtotal", "amount_total", "currency", "customer")
    keep(ctx, obj, "client_reference_id", "payment_intent", "subscription", "invoice", "expires_at")
    ctx.fields["customer_email"] = (obj.get("customer_details") or {}).get("email") or obj.get("customer_email")

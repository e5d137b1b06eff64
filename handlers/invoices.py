"""Invoices: what is owed, what was paid, and how collecting it is going.

Kept: the amounts (due, paid, remaining, total, overpaid), currency, customer, subscription (``subscription`` in
older API versions, ``parent.subscription_details.subscription`` from 2025-03-31 on), number, billing reason,
collection method, due date, the billing period, the payment attempts (``attempt_count``, ``attempted``,
``next_payment_attempt``) and the last finalization error's code and message. Each step of the invoice's life
is stamped with the event's time (``paid_at`` on ``invoice.paid``, ``payment_failed_at``, ``voided_at``, ...),
which says when it happened even for API versions whose snapshot lacks ``status_transitions``.
``invoice.deleted`` (only drafts can be deleted) sets the status to ``deleted``.

Not ``invoice.upcoming``: it carries an invoice that does not exist yet (no id), so its record is keyed by the
event's id and each one would be a state of its own, kept for ever (one per subscription and billing period). A
handler of your own can take it (to notify a customer, say): each of its events then leaves a small state.
"""

from __future__ import annotations

from handlers._common import keep, on_stamped, ref
from streams.events import StripeEvent
from streams.registry import Context

INVOICE_EVENTS = (
    "invoice.created",
    "invoice.deleted",
    "invoice.finalization_failed",
    "invoice.finalized",
    "invoice.marked_uncollectible",
    "invoice.overdue",
    "invoice.overpaid",
    "invoice.paid",
    "invoice.payment_action_required",
    "invoice.payment_attempt_required",
    "invoice.payment_failed",
    "invoice.payment_succeeded",
    "invoice.sent",
    "invoice.updated",
    "invoice.voided",
    "invoice.will_be_due",
)

_STAMPS = {
    "invoice.deleted": "deleted_at",
    "invoice.finalization_failed": "finalization_failed_at",
    "invoice.finalized": "finalized_at",
    "invoice.marked_uncollectible": "marked_uncollectible_at",
    "invoice.overdue": "overdue_at",
    "invoice.overpaid": "overpaid_at",
    "invoice.paid": "paid_at",
    "invoice.payment_action_required": "payment_action_required_at",
    "invoice.payment_attempt_required": "payment_attempt_required_at",
    "invoice.payment_failed": "payment_failed_at",
    "invoice.payment_succeeded": "payment_succeeded_at",
    "invoice.sent": "sent_at",
    "invoice.voided": "voided_at",
    "invoice.will_be_due": "will_be_due_notified_at",
}


@on_stamped(*INVOICE_EVENTS, stamps=_STAMPS)
async def invoice_changed(event: StripeEvent, ctx: Context) -> None:
    obj = event.object
    keep(ctx, obj, "amount_due", "amount_paid", "amount_remaining", "amount_overpaid", "total", "currency")
    keep(ctx, obj, "customer", "number", "billing_reason", "collection_method", "due_date")
    keep(ctx, obj, "period_start", "period_end", "attempt_count", "attempted", "next_payment_attempt")
    subscription = obj.get("subscription")
    if subscription is None:
        subscription = ((obj.get("parent") or {}).get("subscription_details") or {}).get("subscription")
    ctx.fields["subscription"] = ref(subscription)
    error = obj.get("last_finalization_error") or {}
    ctx.fields["last_finalization_error_code"] = error.get("code")
    ctx.fields["last_finalization_error_message"] = error.get("message")
    if event.type == "invoice.deleted":
        ctx.state.status = "deleted"

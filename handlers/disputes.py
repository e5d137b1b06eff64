"""Disputes (``charge.dispute.*``): the money at stake, why, and by when evidence is due.

Kept: amount, currency, reason, the disputed charge and payment intent, whether the charge can still be
refunded, and the evidence details (``due_by``, whether evidence was given, past due, submission count) that
decide what the team must do and by when. When funds were withdrawn or reinstated and when the dispute closed
are stamped with the event's time.
"""

from __future__ import annotations

from handlers._common import keep, on_stamped
from streams.events import StripeEvent
from streams.registry import Context

DISPUTE_EVENTS = (
    "charge.dispute.closed",
    "charge.dispute.created",
    "charge.dispute.funds_reinstated",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.updated",
)

_STAMPS = {
    "charge.dispute.created": "opened_at",
    "charge.dispute.closed": "closed_at",
    "charge.dispute.funds_withdrawn": "funds_withdrawn_at",
    "charge.dispute.funds_reinstated": "funds_reinstated_at",
}


@on_stamped(*DISPUTE_EVENTS, stamps=_STAMPS)
async def dispute_changed(event: StripeEvent, ctx: Context) -> None:
    obj = event.object
    keep(ctx, obj, "amount", "currency", "reason", "charge", "payment_intent", "is_charge_refundable")
    evidence = obj.get("evidence_details") or {}
    ctx.fields["evidence_due_by"] = evidence.get("due_by")
    ctx.fields["has_evidence"] = evidence.get("has_evidence")
    ctx.fields["evidence_past_due"] = evidence.get("past_due")
    ctx.fields["evidence_submission_count"] = evidence.get("submission_count")

"""Subscriptions: who pays for what, for which period, and whether and when it ends.

Kept: customer, currency, collection method, the current period (on the subscription in older API versions,
on its items from 2025-03-31 on: taken from the first item when the subscription has none), the items (price and
quantity), the trial, the cancellation (``cancel_at``, ``canceled_at``, ``cancel_at_period_end``, ``ended_at``),
the latest invoice, paused collection and when a pending update expires. ``customer.subscription.deleted``
means the subscription has ended: its status is ``canceled`` (Stripe's word for it) even if the snapshot says
otherwise (but ``incomplete_expired``: it never started), and ``ended_at`` falls back to the event's time.
Deletion and the notices (trial ending, paused, resumed, pending update applied or expired) are stamped with the
event's time.
"""

from __future__ import annotations

from typing import Any

from handlers._common import keep, on_stamped, ref
from streams.events import StripeEvent
from streams.registry import Context
from streams.state import FINAL_STATUSES

SUBSCRIPTION_EVENTS = (
    "customer.subscription.created",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.pending_update_applied",
    "customer.subscription.pending_update_expired",
    "customer.subscription.resumed",
    "customer.subscription.trial_will_end",
    "customer.subscription.updated",
)

_STAMPS = {
    "customer.subscription.deleted": "deleted_at",
    "customer.subscription.paused": "paused_at",
    "customer.subscription.resumed": "resumed_at",
    "customer.subscription.trial_will_end": "trial_will_end_notified_at",
    "customer.subscription.pending_update_applied": "pending_update_applied_at",
    "customer.subscription.pending_update_expired": "pending_update_expired_at",
}


@on_stamped(*SUBSCRIPTION_EVENTS, stamps=_STAMPS)
async def subscription_changed(event: StripeEvent, ctx: Context) -> None:
    obj = event.object
    keep(ctx, obj, "customer", "currency", "collection_method", "latest_invoice", "trial_start", "trial_end")
    keep(ctx, obj, "cancel_at", "canceled_at", "cancel_at_period_end", "ended_at")
    items: list[dict[str, Any]] = (obj.get("items") or {}).get("data") or []
    first = items[0] if items else {}
    for name in ("current_period_start", "current_period_end"):
        ctx.fields[name] = obj.get(name) if obj.get(name) is not None else first.get(name)
    ctx.fields["items"] = [{"price": ref(item.get("price")), "quantity": item.get("quantity")} for item in items]
    ctx.fields["pause_collection"] = (obj.get("pause_collection") or {}).get("behavior")
    ctx.fields["pending_update_expires_at"] = (obj.get("pending_update") or {}).get("expires_at")
    if event.type == "customer.subscription.deleted":
        if ctx.state.status not in FINAL_STATUSES["subscription"]:  # one that never started stays incomplete_expired
            ctx.state.status = "canceled"
        if ctx.fields["ended_at"] is None:
            ctx.fields["ended_at"] = event.created

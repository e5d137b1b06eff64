"""Benchmark handlers, CPU-bound: keep a few fields of each charge, no I/O.

Loaded by the benchmarked worker with ``HOOKSTREAM_HANDLERS=bench.handlers_cpu``.
"""

from __future__ import annotations

from streams.events import StripeEvent
from streams.registry import Context, on


@on("charge.succeeded", "charge.updated")
async def keep_charge(event: StripeEvent, ctx: Context) -> None:
    """Keep amount, currency and the event's seq (what a real handler keeps, roughly)."""
    obj = event.object
    ctx.fields["amount"] = obj.get("amount")
    ctx.fields["currency"] = obj.get("currency")
    ctx.fields["seq"] = int(obj.get("metadata", {}).get("seq", -1))

"""Benchmark handlers, CPU-bound: keep a few fields of each charge, no I/O.

Loaded by the benchmarked worker with ``HOOKSTREAM_HANDLERS=bench.handlers_cpu``. The handler declares the
fields it reads (``model=``), as the README recommends for hot event types: the worker decodes only those.
"""

from __future__ import annotations

import msgspec

from streams.events import StripeEvent
from streams.registry import Context, on


class Charge(msgspec.Struct):
    """The fields of a charge this handler reads."""

    amount: int
    currency: str
    status: str | None = None
    metadata: dict[str, str] = {}


@on("charge.succeeded", "charge.updated", model=Charge)
async def keep_charge(event: StripeEvent[Charge], ctx: Context) -> None:
    """Keep amount, currency and the event's seq (what a real handler keeps, roughly)."""
    charge = event.object
    ctx.fields["amount"] = charge.amount
    ctx.fields["currency"] = charge.currency
    ctx.fields["seq"] = int(charge.metadata.get("seq", -1))

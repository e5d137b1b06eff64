"""Benchmark handlers, I/O-bound: each event awaits 5 ms of simulated I/O, and the object's state proves order.

Every object's events carry seq 0, 1, 2... (``metadata.seq``). The handler keeps ``last_seq`` in the object's
state and counts in ``violations`` every event whose seq is not ``last_seq + 1`` (reordered, skipped or
repeated), and in ``overlaps`` every event that started while another event of the same object was still in its
handler (per-object concurrency). ``GET /objects/<id>`` then shows, per object, that all its events were applied
one at a time in order. Loaded with ``HOOKSTREAM_HANDLERS=bench.handlers_io``; ``BENCH_IO_MS`` sets the delay.
"""

from __future__ import annotations

import asyncio
import os

import msgspec

from streams.events import StripeEvent
from streams.registry import Context, on

_delay = float(os.environ.get("BENCH_IO_MS", "5")) / 1000
_in_handler: set[str] = set()


class Charge(msgspec.Struct):
    """The fields of a charge this handler reads (declared, as for the CPU-bound handler)."""

    id: str
    status: str | None = None
    metadata: dict[str, str] = {}


@on("charge.succeeded", "charge.updated", model=Charge)
async def io_bound(event: StripeEvent[Charge], ctx: Context) -> None:
    """Await the simulated I/O, then check and keep the object's seq."""
    obj = event.object
    object_id = obj.id
    overlapped = object_id in _in_handler
    _in_handler.add(object_id)
    try:
        await asyncio.sleep(_delay)
    finally:
        if not overlapped:
            _in_handler.discard(object_id)
    seq = int(obj.metadata["seq"])
    if seq != ctx.fields.get("last_seq", -1) + 1:
        ctx.fields["violations"] = ctx.fields.get("violations", 0) + 1
    if overlapped:
        ctx.fields["overlaps"] = ctx.fields.get("overlaps", 0) + 1
    ctx.fields["last_seq"] = seq

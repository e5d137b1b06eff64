"""Helpers the shipped handlers share: copy fields from the object snapshot, and stamp when things happened
(for stale events too: ``on_stamped`` registers a handler with ``include_stale=True``, and only stamps those).

Not a handler module (the leading underscore keeps ``registry.discover`` from importing it as one).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from streams.events import StripeEvent
from streams.registry import Context, Handler, on


def ref(value: Any) -> Any:
    """The id of an expandable field: Stripe sends the id, or the whole object when it was expanded."""
    if isinstance(value, Mapping):
        return value.get("id")
    return value


def keep(ctx: Context, obj: Mapping[str, Any], *names: str) -> None:
    """Copy ``names`` from the snapshot into the kept fields (None when this API version lacks one).

    The snapshot is the whole object as of the event, so a field it no longer has is kept as None rather than
    left at an older value. Expanded objects are kept as their id.
    """
    for name in names:
        ctx.fields[name] = ref(obj.get(name))


def stamp(ctx: Context, event: StripeEvent, names: Mapping[str, str]) -> None:
    """Keep ``event.created`` under ``names[event.type]`` (e.g. ``paid_at`` for ``invoice.paid``), if listed,
    unless a later time is kept there (the event is stale: a second ``invoice.payment_failed`` came first)."""
    name = names.get(event.type)
    if name is None:
        return
    kept = ctx.fields.get(name)
    if not (isinstance(kept, int) and kept > event.created):
        ctx.fields[name] = event.created


def on_stamped(*event_types: str, stamps: Mapping[str, str]) -> Callable[[Handler], Handler]:
    """``@on(*event_types)`` for a handler that keeps what the snapshot says, after which the event's time is
    stamped (``stamps``). For a stale event only the stamp: the object's newer snapshot is kept
    (``include_stale=True``)."""

    def register(keep_snapshot: Handler) -> Handler:
        @functools.wraps(keep_snapshot)
        async def handler(event: StripeEvent, ctx: Context) -> None:
            if not ctx.stale:
                await keep_snapshot(event, ctx)
            stamp(ctx, event, stamps)

        return on(*event_types, include_stale=True)(handler)

    return register

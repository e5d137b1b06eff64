"""Helpers the shipped handlers share: copy fields from the object snapshot, and stamp when things happened
(for stale events too: the shipped handlers register with ``include_stale=True`` and only stamp those).

Not a handler module (the leading underscore keeps ``registry.discover`` from importing it as one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streams.events import StripeEvent
from streams.registry import Context


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

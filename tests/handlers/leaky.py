"""A handler with a realistic bug for the security tests: its exception message quotes the whole object.

Loaded next to tests.handlers.recording (HOOKSTREAM_HANDLERS=tests.handlers.recording,tests.handlers.leaky). An
error built from the data it failed on (``ValueError(f"... {obj!r}")``, a KeyError on a field value) is common;
the worker must not copy such a message, and with it the event body, into its own log lines.
"""

from __future__ import annotations

from streams.events import StripeEvent
from streams.registry import Context, on


@on("customer.updated")
async def fail_quoting_the_object(event: StripeEvent, ctx: Context) -> None:
    raise ValueError(f"cannot handle this customer: {event.object!r}")

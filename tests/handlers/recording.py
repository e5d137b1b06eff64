"""Test handlers that record what they see, for the worker integration tests.

Loaded by workers through HOOKSTREAM_HANDLERS=tests.handlers.recording (instead of the shipped handlers).
They write one line per handler start and end to the file named by HOOKSTREAM_TEST_LOG (appends of short
lines are atomic), so a test can check order per object and overlap across objects from the handlers' own
record, not from timing.
Events whose object has ``metadata.fail == "true"`` fail until the file named by HOOKSTREAM_TEST_FIXED exists;
those with ``metadata.hang == "true"`` wait an hour, or until that file exists (for HANDLER_TIMEOUT and rebalances),
with a ``cancelled`` line when cancelled; those with ``metadata.stubborn == "true"``
wait, swallowing every cancellation (a ``swallowed`` line each), until that file exists (a handler bug the worker's
stop must survive). Those with ``metadata.emit`` set emit the event's id, keyed by the object id, to that topic.
"""

from __future__ import annotations

import asyncio
import os
import random

from streams.events import StripeEvent
from streams.registry import Context, on

_log_path = os.environ.get("HOOKSTREAM_TEST_LOG", "")
_fixed_path = os.environ.get("HOOKSTREAM_TEST_FIXED", "")
_max_delay = float(os.environ.get("HOOKSTREAM_TEST_MAX_DELAY", "0.002"))
_pid = os.getpid()


def fixed() -> bool:
    """True once the file named by HOOKSTREAM_TEST_FIXED exists: the tests' way to mend an injected fault."""
    return bool(_fixed_path) and os.path.exists(_fixed_path)


def _write(line: str) -> None:
    if _log_path:
        with open(_log_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


@on("charge.succeeded", "charge.updated", "charge.captured", "charge.failed", "charge.refunded")
async def record_charge(event: StripeEvent, ctx: Context) -> None:
    obj = event.object
    seq = int(obj.get("metadata", {}).get("seq", -1))
    _write(f"start {_pid} {obj['id']} {seq} {event.id}")
    if obj.get("metadata", {}).get("fail") == "true" and not fixed():
        _write(f"fail {_pid} {obj['id']} {seq} {event.id}")
        raise RuntimeError(f"poison event {event.id}")
    if obj.get("metadata", {}).get("hang") == "true":
        _write(f"hang {_pid} {obj['id']} {seq} {event.id}")
        try:
            async with asyncio.timeout(3600):
                while not fixed():  # noqa: ASYNC110  # a file another process creates, not an Event
                    await asyncio.sleep(0.1)
        except asyncio.CancelledError:
            _write(f"cancelled {_pid} {obj['id']} {seq} {event.id}")
            raise
    if obj.get("metadata", {}).get("stubborn") == "true":
        _write(f"stubborn {_pid} {obj['id']} {seq} {event.id}")
        while not fixed():
            try:
                await asyncio.sleep(0.1)
            except BaseException:  # the bug: it swallows the deadline's and the stop's cancellations
                _write(f"swallowed {_pid} {obj['id']} {seq} {event.id}")
    await asyncio.sleep(random.random() * _max_delay)
    ctx.fields["seqs"] = [*ctx.fields.get("seqs", []), seq]
    ctx.fields["amount"] = obj.get("amount")
    if topic := obj.get("metadata", {}).get("emit"):
        ctx.emit(topic, event.id.encode(), key=obj["id"].encode())
    _write(f"end {_pid} {obj['id']} {seq} {event.id}")

"""What a handler emits: sent once the event is applied, before its state is stored, never for a failed attempt."""

from __future__ import annotations

import asyncio

from gateway.envelope import to_record
from ops.fixtures import build_event, encode
from streams.events import StripeEvent
from streams.metrics import WorkerMetrics
from streams.processor import EventProcessor, RetryPolicy
from streams.registry import Context, HandlerRegistry
from tests.support import ConsumedRecord, DictStore


def test_emitted_records_go_out_once_for_the_attempt_that_succeeded_and_before_the_state_is_stored() -> None:
    """Sent first, a stop or crash between the two leaves the event unapplied, to be done (and emitted) again;
    stored first, the event would be a duplicate after a restart and what it emitted lost."""
    handlers = HandlerRegistry()

    @handlers.on("invoice.paid")
    async def notify(event: StripeEvent, ctx: Context) -> None:
        ctx.emit("billing.notices", f"paid, attempt {ctx.attempt}".encode(), b"in_emit")
        ctx.fields["notified"] = True
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails after emitting")

    store = DictStore()
    sent: list[tuple[str, bytes | None, bytes, bool]] = []

    async def send(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        sent.append((topic, key, value, b"in_emit" in store))

    processor = EventProcessor(
        handlers, store, send, "stripe.dlq", RetryPolicy(2, 0.001, 0.001, 1.0), WorkerMetrics(), max_value_bytes=1 << 20
    )
    record = to_record(encode(build_event("invoice.paid", object_id="in_emit")), "stripe.", 0)
    outcome = asyncio.run(
        processor.process(ConsumedRecord(record.topic, 0, 0, record.key, record.value, record.headers))
    )
    assert str(outcome) == "ok"
    assert sent == [("billing.notices", b"in_emit", b"paid, attempt 2", False)]  # state not stored yet when sent
    assert b"in_emit" in store

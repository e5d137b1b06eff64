"""HANDLER_TIMEOUT on handlers that wait: the attempt fails with TimeoutError in the actor running it, and nothing
else is touched (in particular not the task that submitted the event: the consumer's fetch loop)."""

from __future__ import annotations

import asyncio

from gateway.envelope import to_record
from ops.fixtures import build_event, encode
from streams.actors import ActorPool
from streams.events import StripeEvent
from streams.metrics import WorkerMetrics
from streams.processor import EventProcessor, Record, RetryPolicy
from streams.registry import Context, HandlerRegistry
from tests.support import ConsumedRecord, DictStore


def _records(*object_ids: str) -> list[ConsumedRecord]:
    records = []
    for offset, object_id in enumerate(object_ids):
        record = to_record(encode(build_event("charge.succeeded", object_id=object_id)), "stripe.", 0)
        records.append(ConsumedRecord(record.topic, 0, offset, record.key, record.value, record.headers))
    return records


def _processor(handlers: HandlerRegistry, letters: list[dict[str, bytes]], timeout: float) -> EventProcessor:
    async def send(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        letters.append(dict(headers))

    return EventProcessor(
        handlers, DictStore(), send, "stripe.dlq", RetryPolicy(2, 0.01, 0.01, timeout), WorkerMetrics(), 1 << 20
    )


def _actors(handlers: HandlerRegistry, timeout: float) -> tuple[ActorPool[Record], list[str], list[dict[str, bytes]]]:
    """An actor pool processing records with ``handlers``, its outcomes and its dead letters' headers."""
    letters: list[dict[str, bytes]] = []
    processor = _processor(handlers, letters, timeout)
    outcomes: list[str] = []

    async def process(record: Record) -> None:
        outcomes.append(str(await processor.process(record)))

    return ActorPool(process, max_inflight=10), outcomes, letters


def test_a_handler_that_hangs_is_timed_out_in_its_actor_and_the_submitter_runs_on() -> None:
    handlers = HandlerRegistry()
    cancelled_inside: list[str] = []

    @handlers.on("charge.succeeded")
    async def hang_on_one(event: StripeEvent, ctx: Context) -> None:
        if event.object["id"] == "ch_hangs":
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled_inside.append(event.id)
                raise
        await asyncio.sleep(0.001)
        ctx.fields["done"] = True

    async def run() -> tuple[list[str], list[dict[str, bytes]], bool]:
        pool, outcomes, letters = _actors(handlers, timeout=0.1)

        async def submitter() -> None:  # stands for the consumer's fetch loop
            for record in _records("ch_hangs", "ch_a", "ch_b"):
                await pool.submit(record.key, record)
            await asyncio.sleep(0.5)  # past the deadline of both attempts: must not be cancelled meanwhile

        task = asyncio.create_task(submitter())
        await asyncio.wait_for(pool.drain(), timeout=10)
        await asyncio.wait_for(task, timeout=10)
        return outcomes, letters, task.cancelled()

    outcomes, letters, submitter_cancelled = asyncio.run(run())
    assert not submitter_cancelled
    assert sorted(outcomes) == ["dead_lettered", "ok", "ok"]
    assert len(cancelled_inside) == 2  # each attempt was interrupted where it waited
    assert letters[0]["error-type"] == b"TimeoutError"
    assert letters[0]["attempts"] == b"2"


def test_a_handler_that_keeps_yielding_without_a_future_is_timed_out_too() -> None:
    handlers = HandlerRegistry()

    @handlers.on("charge.succeeded")
    async def spin(event: StripeEvent, ctx: Context) -> None:
        while True:  # noqa: ASYNC110
            await asyncio.sleep(0)  # a bare yield: nothing to cancel, the error comes at the next resume

    async def run() -> tuple[str, list[dict[str, bytes]]]:
        letters: list[dict[str, bytes]] = []
        processor = _processor(handlers, letters, timeout=0.05)
        (record,) = _records("ch_spins")
        outcome = await asyncio.wait_for(processor.process(record), timeout=10)
        return str(outcome), letters

    outcome, letters = asyncio.run(run())
    assert outcome == "dead_lettered"
    assert letters[0]["error-type"] == b"TimeoutError"


def test_stopping_the_actors_cancels_a_waiting_handler_without_dead_lettering_it() -> None:
    handlers = HandlerRegistry()

    @handlers.on("charge.succeeded")
    async def wait_long(event: StripeEvent, ctx: Context) -> None:
        await asyncio.sleep(3600)

    async def run() -> tuple[list[str], list[dict[str, bytes]]]:
        pool, outcomes, letters = _actors(handlers, timeout=0.2)
        (record,) = _records("ch_waits")
        await pool.submit(record.key, record)
        await asyncio.sleep(0.01)
        await pool.cancel()  # shutdown or rebalance: the event stays unacknowledged, to be processed again
        await asyncio.sleep(0.5)  # past the deadline
        return outcomes, letters

    outcomes, letters = asyncio.run(run())
    assert outcomes == [] and letters == []

"""HANDLER_TIMEOUT on handlers that wait: the attempt fails with TimeoutError in the actor running it, and nothing
else is touched (in particular not the task that submitted the event: the consumer's fetch loop)."""

from __future__ import annotations

import asyncio

from streams.actors import ActorPool
from streams.events import StripeEvent
from streams.processor import EventProcessor, Record
from streams.registry import Context, HandlerRegistry
from tests.support import ConsumedRecord, DictStore, processor


def _records(*object_ids: str) -> list[ConsumedRecord]:
    return [ConsumedRecord.of_event("charge.succeeded", object_id, n) for n, object_id in enumerate(object_ids)]


def _processor(handlers: HandlerRegistry, letters: list[dict[str, bytes]], timeout: float) -> EventProcessor:
    async def send(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        letters.append(dict(headers))

    return processor(handlers, DictStore(), send, attempts=2, backoff=0.01, timeout=timeout)


def _actors(handlers: HandlerRegistry, timeout: float) -> tuple[ActorPool[Record], list[str], list[dict[str, bytes]]]:
    """An actor pool processing records with ``handlers``, its outcomes and its dead letters' headers."""
    letters: list[dict[str, bytes]] = []
    processor = _processor(handlers, letters, timeout)
    outcomes: list[str] = []

    async def process(record: Record) -> None:
        outcomes.append(str(await processor.process(record)))

    return ActorPool(process, max_inflight=10), outcomes, letters


def _through_a_fetch_loop(
    handlers: HandlerRegistry, timeout: float, *object_ids: str
) -> tuple[list[str], list[dict[str, bytes]], bool]:
    """Submit the objects' events from a task standing for the consumer's fetch loop, which then lingers 0.5 s
    (past the deadlines); the outcomes, the dead letters' headers, and whether that task was cancelled."""

    async def run() -> tuple[list[str], list[dict[str, bytes]], bool]:
        pool, outcomes, letters = _actors(handlers, timeout)

        async def submitter() -> None:
            for record in _records(*object_ids):
                await pool.submit(record.key, record)
            await asyncio.sleep(0.5)

        task = asyncio.create_task(submitter())
        await asyncio.wait_for(pool.drain(), timeout=10)
        await asyncio.wait_for(task, timeout=10)
        return outcomes, letters, task.cancelled()

    return asyncio.run(run())


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

    outcomes, letters, submitter_cancelled = _through_a_fetch_loop(handlers, 0.1, "ch_hangs", "ch_a", "ch_b")
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
    seen: list[str] = []

    @handlers.on("charge.succeeded")
    async def wait_long(event: StripeEvent, ctx: Context) -> None:
        seen.append("started")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def run() -> tuple[list[str], list[dict[str, bytes]]]:
        pool, outcomes, letters = _actors(handlers, timeout=0.2)
        (record,) = _records("ch_waits")
        await pool.submit(record.key, record)
        await asyncio.sleep(0.01)
        await pool.cancel()  # shutdown or rebalance: the event stays unacknowledged, to be processed again
        await asyncio.sleep(0.5)  # past the deadline
        return outcomes, letters

    outcomes, letters = asyncio.run(run())
    assert seen == ["started", "cancelled"]  # it ran, and the stop (not a retry) ended it
    assert outcomes == [] and letters == []


def test_a_cancellation_the_worker_did_not_ask_for_is_a_failed_attempt_not_a_lost_event() -> None:
    """A handler whose awaited future is cancelled by someone else (here: a future shared with a handler that timed
    out), or that raises CancelledError itself, fails that attempt like any other: retried, then dead-lettered."""
    handlers = HandlerRegistry()
    shared: dict[str, asyncio.Future[None]] = {}

    @handlers.on("charge.succeeded")
    async def wait_on_shared(event: StripeEvent, ctx: Context) -> None:
        if event.object["id"] == "ch_raises":
            raise asyncio.CancelledError
        if event.object["id"] == "ch_foreign":  # cancelled by someone else well before its deadline, every attempt
            cancelled = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(cancelled.cancel)
            await cancelled
        future = shared.get("f")
        if future is None or future.done():
            future = shared["f"] = asyncio.get_running_loop().create_future()
        await future  # never resolved: only a cancellation ends it

    first, second, raises, foreign = _records("ch_first", "ch_second", "ch_raises", "ch_foreign")

    async def run() -> tuple[list[str], list[dict[str, bytes]], int, int]:
        pool, outcomes, letters = _actors(handlers, timeout=0.1)
        await pool.submit(first.key, first)
        await asyncio.sleep(0.05)  # ch_second waits on the same future, its deadline half as near
        await pool.submit(second.key, second)
        await pool.submit(raises.key, raises)
        await pool.submit(foreign.key, foreign)
        await asyncio.wait_for(pool.drain(), timeout=10)
        return outcomes, letters, pool.inflight, pool.active_actors

    outcomes, letters, inflight, actors = asyncio.run(run())
    assert sorted(outcomes) == ["dead_lettered"] * 4
    assert (inflight, actors) == (0, 0)
    assert {letter["error-type"] for letter in letters} <= {b"TimeoutError", b"HandlerCancelled"}
    assert [letter["attempts"] for letter in letters] == [b"2"] * 4  # each retried: a failed attempt like any other
    for record in (raises, foreign):  # neither came near its deadline
        (letter,) = [letter for letter in letters if letter["event-id"] == dict(record.headers)["event-id"]]
        assert letter["error-type"] == b"HandlerCancelled"


def test_the_workers_own_cancellation_goes_on_even_after_a_deadline_passed() -> None:
    """A handler that swallows its deadline's cancellation and waits again is still stopped by the worker, and that
    stop is not mistaken for the deadline (which would retry and dead-letter an event that must stay unacked)."""
    handlers = HandlerRegistry()
    seen: list[str] = []

    @handlers.on("charge.succeeded")
    async def swallow_and_wait(event: StripeEvent, ctx: Context) -> None:
        seen.append("started")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append("deadline")
            try:
                await asyncio.sleep(3600)  # "cleanup" that waits past the deadline
            except asyncio.CancelledError:
                seen.append("stopped")
                raise

    async def run() -> tuple[list[str], list[dict[str, bytes]]]:
        pool, outcomes, letters = _actors(handlers, timeout=0.05)
        (record,) = _records("ch_swallows")
        await pool.submit(record.key, record)
        await asyncio.sleep(0.2)  # the deadline passed and was swallowed
        assert seen == ["started", "deadline"]
        await pool.cancel()
        await asyncio.sleep(0.1)
        return outcomes, letters

    assert asyncio.run(run()) == ([], [])
    assert seen == ["started", "deadline", "stopped"]  # one attempt, ended by the worker's stop


def test_deadlines_are_kept_on_a_second_event_loop() -> None:
    """The first loop ends with a check pending (its handler finished within 10 ms, the first check is due at 100 ms);
    the second's handler hangs."""
    handlers = HandlerRegistry()

    @handlers.on("charge.succeeded")
    async def hang(event: StripeEvent, ctx: Context) -> None:
        await asyncio.sleep(0.01 if event.object["id"] == "ch_quick" else 3600)

    letters: list[dict[str, bytes]] = []
    processor = _processor(handlers, letters, timeout=1.0)

    async def one(object_id: str) -> str:
        (record,) = _records(object_id)
        return str(await asyncio.wait_for(processor.process(record), timeout=10))

    assert [asyncio.run(one("ch_quick")), asyncio.run(one("ch_hangs"))] == ["ok", "dead_lettered"]


def test_timeouts_and_task_groups_a_handler_enters_before_it_first_waits_stay_with_the_handler() -> None:
    """asyncio.timeout and TaskGroup note the current task when entered; entered in the handler's first step (run
    in the submitting task's turn), they must still cancel the handler, never the submitter (the fetch loop)."""
    handlers = HandlerRegistry()
    current: list[object] = []

    @handlers.on("charge.succeeded")
    async def own_timeouts(event: StripeEvent, ctx: Context) -> None:
        if event.object["id"] == "ch_timeout":
            async with asyncio.timeout(0.05):
                await asyncio.sleep(3600)
        elif event.object["id"] == "ch_group":

            async def fails() -> None:
                await asyncio.sleep(0.02)
                raise ValueError("a child failed")

            async with asyncio.TaskGroup() as group:
                group.create_task(fails())
                group.create_task(asyncio.sleep(3600))
        else:
            before = asyncio.current_task()
            await asyncio.sleep(0.01)
            after = asyncio.current_task()
            assert after is not None
            current.extend((before, after, after.done(), after.get_loop()))

    outcomes, letters, submitter_cancelled = _through_a_fetch_loop(handlers, 30, "ch_timeout", "ch_group", "ch_plain")
    assert not submitter_cancelled
    assert sorted(outcomes) == ["dead_lettered", "dead_lettered", "ok"]
    assert sorted(letter["error-type"] for letter in letters) == [b"ExceptionGroup", b"TimeoutError"]
    # one task throughout, as for a coroutine awaited in a task: the actor's, which its first step ran as
    before, after, done, loop = current
    assert before is after and not done and loop is not None


def test_a_handler_that_lets_through_only_its_tasks_own_cancellation_is_still_timed_out() -> None:
    """aiohttp's client re-raises a CancelledError only when ``current_task().cancelling()`` says the task is being
    cancelled, and otherwise takes it for its own. The deadline must count as the task's: on the first attempt
    (begun eagerly, its deadline set on the stand-in) and on the retry (begun in the actor task)."""
    handlers = HandlerRegistry()
    swallowed: list[str] = []

    @handlers.on("charge.succeeded")
    async def polite(event: StripeEvent, ctx: Context) -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                swallowed.append(event.id)  # not meant for this task, as far as it can tell

    outcomes, letters, submitter_cancelled = _through_a_fetch_loop(handlers, 0.1, "ch_polite")
    assert not submitter_cancelled
    assert outcomes == ["dead_lettered"]
    assert [letter["error-type"] for letter in letters] == [b"TimeoutError"]
    assert [letter["attempts"] for letter in letters] == [b"2"]
    assert swallowed == []


def test_the_workers_stop_during_a_handlers_own_timeout_clean_up_is_not_taken_for_that_timeout() -> None:
    """A handler's own asyncio.timeout, entered eagerly, expires; its clean-up waits; the worker stops meanwhile. The
    timeout must let the worker's cancellation through (two requests, one its own), not turn it into TimeoutError:
    that would retry and dead-letter an event that has to stay unacknowledged."""
    handlers = HandlerRegistry()
    seen: list[str] = []

    @handlers.on("charge.succeeded")
    async def cleans_up(event: StripeEvent, ctx: Context) -> None:
        seen.append("started")
        async with asyncio.timeout(0.05):
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                seen.append("own timeout")
                try:
                    await asyncio.sleep(3600)  # clean-up that waits (closing a connection, say)
                except asyncio.CancelledError:
                    seen.append("stopped")
                    raise
                raise

    async def run() -> tuple[list[str], list[dict[str, bytes]]]:
        pool, outcomes, letters = _actors(handlers, timeout=30)
        (record,) = _records("ch_cleans_up")
        await pool.submit(record.key, record)
        await asyncio.sleep(0.2)  # its timeout expired; the clean-up waits
        assert seen == ["started", "own timeout"]
        await asyncio.wait_for(pool.cancel(), timeout=5)
        await asyncio.sleep(0.1)
        return outcomes, letters

    assert asyncio.run(run()) == ([], [])
    assert seen == ["started", "own timeout", "stopped"]

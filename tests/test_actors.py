"""The actor pool: order per key, concurrency across keys, the in-flight bound, idle actors released."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import uuid

import pytest

from streams.actors import ActorPool
from streams.events import StripeEvent
from streams.registry import Context, HandlerRegistry
from tests.support import ConsumedRecord, DictStore, processor, recording_send


def test_order_per_key_concurrency_across_keys_and_bound() -> None:
    async def run() -> tuple[dict[str, list[int]], int, int, int]:
        done: dict[str, list[int]] = {}
        running: set[str] = set()
        most_keys = 0
        most_inflight = 0
        pool: ActorPool[tuple[str, int]]

        async def process(item: tuple[str, int]) -> None:
            nonlocal most_keys, most_inflight
            key, seq = item
            assert key not in running, "two items of one key at once"
            running.add(key)
            most_keys = max(most_keys, len(running))
            most_inflight = max(most_inflight, pool.inflight)
            await asyncio.sleep(random.random() / 1000)
            running.discard(key)
            done.setdefault(key, []).append(seq)

        pool = ActorPool(process, max_inflight=16)
        for seq in range(20):
            for key in random.sample([f"k{i}" for i in range(50)], 50):
                await pool.submit(key, (key, seq))
        await pool.drain()
        return done, most_keys, most_inflight, pool.active_actors

    done, most_keys, most_inflight, active = asyncio.run(run())
    assert all(seqs == list(range(20)) for seqs in done.values()) and len(done) == 50
    assert 1 < most_keys <= 16
    assert most_inflight <= 16
    assert active == 0  # idle actors are gone


def _held_pool(max_inflight: int) -> tuple[ActorPool[int], asyncio.Event]:
    """A pool whose items all wait until the event is set."""
    release = asyncio.Event()

    async def process(item: int) -> None:
        await release.wait()

    return ActorPool(process, max_inflight=max_inflight), release


def test_submit_waits_when_the_bound_is_reached() -> None:
    async def run() -> tuple[bool, bool]:
        pool, release = _held_pool(max_inflight=2)
        await pool.submit("a", 1)
        await pool.submit("b", 2)
        third = asyncio.create_task(pool.submit("c", 3))
        await asyncio.sleep(0.05)
        blocked = not third.done()
        release.set()
        await asyncio.wait_for(third, 1)
        await pool.drain()
        return blocked, pool.inflight == 0

    blocked, empty = asyncio.run(run())
    assert blocked and empty


def test_cancelled_at_once_the_pool_is_idle_even_if_its_actors_never_started() -> None:
    """Stopping right after an item began waiting (its actor task created, not yet run): a task cancelled before its
    first step never runs its finally blocks, and a drain after the cancel must not wait for it."""

    async def run() -> tuple[int, int, int]:
        pool, _ = _held_pool(max_inflight=4)
        await pool.submit("k", 1)  # waits: an actor task is created, and not started before the cancel
        await pool.submit("k", 2)  # queued behind it: never runs
        await pool.cancel()
        await asyncio.wait_for(pool.drain(), timeout=5)
        return pool.active_actors, len(pool._tasks), pool.inflight

    assert asyncio.run(run()) == (0, 0, 0)  # nothing left counted against the in-flight bound


def test_an_item_whose_actor_is_cancelled_before_it_starts_is_ended_not_left_suspended() -> None:
    """The record began eagerly and its handler waits; its actor task, cancelled before its first step, never
    continues it. Left suspended, the handler's deadline watch held it (and the stand-in task, which names what it
    runs): never collected, its finally blocks never ran. It is cancelled where it waits, as its task would: its
    cleanup runs as the same task and in its own context, and a cancelled record is no failure to dead-letter."""
    handlers = HandlerRegistry()
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="none")
    ended: list[tuple[str, bool, str]] = []

    @handlers.on("invoice.paid")
    async def waits(event: StripeEvent, ctx: Context) -> None:
        token = marker.set(event.object["id"])
        began_as = asyncio.current_task()
        try:
            await asyncio.sleep(3600)
        finally:
            ended.append((event.object["id"], asyncio.current_task() is began_as, marker.get()))
            marker.reset(token)

    sent: list[tuple[str, dict[str, bytes]]] = []
    proc = processor(handlers, DictStore(), recording_send(sent), timeout=3600)

    async def run() -> int:
        async def finish(record: ConsumedRecord) -> None:
            await proc.process(record)

        pool: ActorPool[ConsumedRecord] = ActorPool(finish, max_inflight=4)
        await pool.submit(b"in_1", ConsumedRecord.of_event("invoice.paid", "in_1"))
        await pool.cancel()
        await asyncio.sleep(0)  # the cancelled task's callbacks
        return pool.inflight

    assert asyncio.run(run()) == 0
    assert ended == [("in_1", True, "in_1")]
    assert sent == []


def test_stop_lets_items_finish_within_the_grace_and_cancels_the_rest() -> None:
    async def run() -> tuple[int, list[str], int]:
        finished: list[str] = []

        async def process(item: str) -> None:
            await asyncio.sleep(0.01 if item == "quick" else 3600)
            finished.append(item)

        pool: ActorPool[str] = ActorPool(process, max_inflight=4)
        for key in ("quick", "hangs", "hangs too"):
            await pool.submit(key, key)
        cancelled = await asyncio.wait_for(pool.stop(grace=0.2), timeout=5)
        return cancelled, finished, pool.inflight

    assert asyncio.run(run()) == (2, ["quick"], 0)


def test_a_stop_gives_up_before_any_cancellation_reaches_a_handler() -> None:
    """What finished within the grace is the generation's; a handler that swallows its cancellation runs on after
    the worker gave the generation up, and must find it given up (streams/app.py's ``_ours``), however promptly
    it returns: else it would store and ack a record its partition's next owner runs too."""

    async def run() -> tuple[int, list[tuple[str, bool]]]:
        given_up = False
        seen: list[tuple[str, bool]] = []  # each item's end, and whether the generation was given up by then

        async def process(item: str) -> None:
            try:
                await asyncio.sleep(0.01 if item == "quick" else 3600)
            except asyncio.CancelledError:  # the mistake: returns as if done
                pass
            seen.append((item, given_up))

        def give_up() -> None:
            nonlocal given_up
            given_up = True

        pool: ActorPool[str] = ActorPool(process, max_inflight=4)
        for key in ("quick", "swallows"):
            await pool.submit(key, key)
        cancelled = await asyncio.wait_for(pool.stop(grace=0.2, patience=1, giving_up=give_up), timeout=5)
        return cancelled, seen

    assert asyncio.run(run()) == (1, [("quick", False), ("swallows", True)])


def test_stop_goes_on_without_an_actor_whose_handler_swallows_cancellation(caplog: pytest.LogCaptureFixture) -> None:
    """A handler that catches BaseException in a retry loop never lets a cancellation end it: the stop must not
    wait for it forever. It is left behind (logged once), and its one item is released if it ever ends. A handler
    that catches the cancellation once and returns must not let its actor go on to the items queued behind it."""

    async def run() -> tuple[int, int, list[str], int, int, list[str]]:
        ran: list[str] = []
        let_go = asyncio.Event()

        async def process(item: str) -> None:
            ran.append(item)
            if item == "stubborn":
                while not let_go.is_set():
                    try:
                        await asyncio.sleep(0.01)
                    except BaseException:  # the mistake under test
                        pass
            elif item == "swallows once":
                try:
                    await asyncio.sleep(3600)
                except BaseException:  # the same mistake, without the loop: returns as if done
                    return
            else:
                await asyncio.sleep(0.3)  # queued: would still be running when the stop returns

        pool: ActorPool[str] = ActorPool(process, max_inflight=8)
        for key in ("k", "j"):
            await pool.submit(key, "stubborn" if key == "k" else "swallows once")
            await pool.submit(key, f"queued behind {key}")
        try:
            cancelled = await asyncio.wait_for(pool.stop(grace=0.05, patience=0.2), timeout=5)
            left = pool.inflight  # the stubborn item, still running
            # the app stops it twice: a second stop that waited for it again would wait out the grace or the
            # patience (an hour each), and wait_for would fail it
            again = await asyncio.wait_for(pool.stop(grace=3600, patience=3600), timeout=5)
        finally:
            let_go.set()  # whatever happened: a stubborn actor left running would hang asyncio.run's cleanup
        await asyncio.sleep(0.1)  # it ends now, long after the stop
        return cancelled, left, ran, again, pool.inflight, [r.getMessage() for r in caplog.records]

    cancelled, left, ran, again, inflight_after, logged = asyncio.run(run())
    assert cancelled == 4 and left == 1
    assert sorted(ran) == ["stubborn", "swallows once"]  # nothing queued ran, whatever its handler did
    assert again == 1  # the second stop counts it, without waiting for it again
    assert inflight_after == 0  # its late release brought the count back to zero, not below
    assert sum("swallows CancelledError" in line for line in logged) == 1


@pytest.mark.parametrize("stops", [1, 2])
def test_items_of_a_key_whose_actor_was_left_behind_wait_until_it_ends(stops: int) -> None:
    """After a rebalance the worker goes on, and may get the object's partition back: its next items must not run
    beside the item whose handler swallowed the cancellation (one at a time per object), but after it; also after
    a second rebalance while it still runs."""

    async def run() -> tuple[list[str], list[str], int, int]:
        ran: list[str] = []
        let_go = asyncio.Event()

        async def process(item: str) -> None:
            ran.append(f"start {item}")
            while item == "stubborn" and not let_go.is_set():
                try:
                    await asyncio.sleep(0.01)
                except BaseException:  # the mistake
                    pass
            await asyncio.sleep(0.01)
            ran.append(f"end {item}")

        pool: ActorPool[str] = ActorPool(process, max_inflight=8)
        await pool.submit("k", "stubborn")
        try:
            for _ in range(stops):  # rebalances, say
                await asyncio.wait_for(pool.stop(grace=0.05, patience=0.1), timeout=5)
            await pool.submit("k", "next of k")
            await pool.submit("j", "other key")
            await asyncio.sleep(0.2)
            while_stuck = list(ran)
        finally:
            let_go.set()
        await asyncio.wait_for(pool.drain(), timeout=5)
        return while_stuck, ran, pool.inflight, pool.active_actors

    while_stuck, ran, inflight, actors = asyncio.run(run())
    assert "start next of k" not in while_stuck and "end other key" in while_stuck  # other keys go on
    assert ran.index("end stubborn") < ran.index("start next of k")
    assert "end next of k" in ran and inflight == 0 and actors == 0


def test_nothing_more_of_a_halted_key_runs_even_after_a_cancel() -> None:
    """An item whose state was not stored halts its key (streams/app.py): a later item of that object stored on top
    would make it stale when it comes again. Queued and later items of the key are dropped unrun and their slots
    freed, also after a cancel (a rebalance while the worker stops); other keys go on."""

    async def run() -> tuple[list[str], int, int, int]:
        ran: list[str] = []
        pool: ActorPool[str]

        async def process(item: str) -> None:
            ran.append(item)
            await asyncio.sleep(0.01)
            if item == "k1":
                pool.halt("k")
                raise RuntimeError("not stored")

        pool = ActorPool(process, max_inflight=8)
        for item in ("k1", "k2", "j1", "k3"):
            await pool.submit(item[0], item)
        await asyncio.wait_for(pool.drain(), timeout=5)
        await pool.submit("k", "k4")
        await pool.submit("j", "j2")
        await asyncio.wait_for(pool.drain(), timeout=5)
        inflight, actors = pool.inflight, pool.active_actors
        await pool.cancel()
        await pool.submit("k", "k5")
        await pool.submit("j", "j3")
        await asyncio.wait_for(pool.drain(), timeout=5)
        return ran, inflight, actors, pool.inflight

    ran, inflight, actors, after_cancel = asyncio.run(run())
    assert sorted(ran) == ["j1", "j2", "j3", "k1"]
    assert inflight == 0 and actors == 0 and after_cancel == 0


def test_an_item_waiting_for_room_does_not_run_once_its_key_is_halted() -> None:
    """The fetch loop submitted B of object K while the pool was full; K's item A then failed to be stored and
    halted K. B must not start once A frees its slot: it would run on a state without A (lost for good if A is
    then judged stale after the restart)."""

    async def run() -> list[str]:
        ran: list[str] = []
        gate = asyncio.Event()

        async def process(item: str) -> None:
            ran.append(item)
            if item == "A":
                await gate.wait()
                pool.halt("K")  # as streams/app.py does when A's state was not stored

        pool: ActorPool[str] = ActorPool(process, max_inflight=1)
        await pool.submit("K", "A")
        waiting = asyncio.create_task(pool.submit("K", "B"))  # no room: waits
        await asyncio.sleep(0.01)
        assert not waiting.done()
        gate.set()
        await asyncio.wait_for(waiting, timeout=5)
        await asyncio.wait_for(pool.drain(), timeout=5)
        return ran

    assert asyncio.run(run()) == ["A"]


def test_a_submit_cancelled_while_waiting_takes_no_slot() -> None:
    async def run() -> tuple[int, int]:
        pool, release = _held_pool(max_inflight=1)
        await pool.submit("a", 1)
        waiting = asyncio.create_task(pool.submit("b", 2))
        await asyncio.sleep(0.01)
        waiting.cancel()  # e.g. a rebalance stops the stream
        await asyncio.gather(waiting, return_exceptions=True)
        during = pool.inflight
        release.set()
        await pool.drain()
        await asyncio.wait_for(pool.submit("c", 3), 1)  # the slot came back
        await pool.drain()
        return during, pool.inflight

    assert asyncio.run(run()) == (1, 0)


def test_an_exception_does_not_stop_the_key_and_its_message_stays_out_of_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    marker = f"BODY-MARKER-{uuid.uuid4().hex}"  # made at run time: the stack shows source lines, not messages

    async def run() -> list[int]:
        seen: list[int] = []

        async def process(item: int) -> None:
            seen.append(item)
            if item == 1:  # fails at once (eagerly, in submit)
                raise RuntimeError(f"boom: {marker}")
            await asyncio.sleep(0)
            if item == 2:  # fails after waiting (in the actor's task)
                raise RuntimeError(f"boom: {marker}")

        pool: ActorPool[int] = ActorPool(process, max_inflight=4)
        for i in range(4):
            await pool.submit("k", i)
        await pool.drain()
        return seen

    with caplog.at_level(logging.DEBUG):
        assert asyncio.run(run()) == [0, 1, 2, 3]
    lines = [r.getMessage() for r in caplog.records if "unexpected error" in r.getMessage()]
    assert len(lines) == 2 and all("RuntimeError at test_actors.py" in line for line in lines)
    assert all(marker not in r.getMessage() and not r.exc_info for r in caplog.records)


def test_an_item_that_fails_before_it_waits_is_logged_and_frees_its_slot(caplog: pytest.LogCaptureFixture) -> None:
    """An item that raises in its first step raises inside ``submit`` (eager start), in the stream's fetch loop: it
    must be logged there and give back its slot, or the loop would die or the bound shrink for good."""

    async def run() -> int:
        async def process(item: int) -> None:
            raise RuntimeError("fails at once")

        pool: ActorPool[int] = ActorPool(process, max_inflight=1)
        await pool.submit("k", 1)
        await asyncio.wait_for(pool.submit("j", 2), timeout=1)  # the one slot came back
        return pool.inflight

    with caplog.at_level(logging.ERROR, logger="streams.actors"):
        assert asyncio.run(run()) == 0
    assert len(caplog.records) == 2 and all("RuntimeError" in r.getMessage() for r in caplog.records)


def test_a_queued_item_cancelled_as_it_begins_frees_its_slot() -> None:
    """A queued item whose first step raises CancelledError (it awaits something already cancelled) ends its
    actor, as a cancellation does; its slot in the in-flight bound is freed all the same, or the bound shrank for
    good (the items queued behind it are another matter: dropped, as at a cancel)."""

    async def run() -> int:
        async def process(item: str) -> None:
            if item == "waits":
                await asyncio.sleep(0.01)
            elif item == "cancelled":
                raise asyncio.CancelledError()

        pool: ActorPool[str] = ActorPool(process, max_inflight=8)
        await pool.submit("k", "waits")
        await pool.submit("k", "cancelled")
        await asyncio.sleep(0.1)
        return pool.inflight

    assert asyncio.run(run()) == 0


def test_bound_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ActorPool(lambda item: asyncio.sleep(0), max_inflight=0)

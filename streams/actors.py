"""An actor per key: items of one key run one after another in arrival order; keys run concurrently.

An actor is a deque and a task that exist only while an item of the key is waiting (on I/O, a retry), so idle
keys cost nothing and memory stays bounded however many distinct keys pass; an item that never waits runs
without either. A count bounds the items in flight across all keys: ``submit`` waits while it is at the bound,
and so the caller (the stream) stops pulling from Kafka. (A plain count, not an ``asyncio.Semaphore``: its
``acquire`` cost a coroutine and a scan of its waiters per event, ~2% of a worker's GIL samples.)
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

from ops.logs import described, stack
from streams import eager

T = TypeVar("T")

log = logging.getLogger(__name__)

#: Seconds cancelled actors get to end (their handlers' cleanup) before a stop goes on without them.
CANCEL_PATIENCE = 5.0


class ActorPool(Generic[T]):
    def __init__(self, process: Callable[[T], Coroutine[Any, Any, None]], max_inflight: int) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self._process = process
        self._inflight = 0
        self._max_inflight = max_inflight
        self._room: list[asyncio.Future[None]] = []  # submitters waiting for an item to finish
        self._actors: dict[Hashable, deque[T]] = {}
        self._tasks: dict[asyncio.Task[None], Hashable] = {}  # each actor's task, and its key
        self._abandoned: set[asyncio.Task[None]] = set()  # ignored their cancellation (``cancel``)
        self._parks: set[Hashable] = set()  # keys held by an actor left behind (``_park``): no task of ours runs them
        self._unstarted: dict[asyncio.Task[None], eager.Resume[None]] = {}  # actor tasks not run yet: their item
        self._halted: set[Hashable] = set()  # keys of which nothing more runs (``halt``)
        self._idle = asyncio.Event()  # no actor at all
        self._idle.set()
        self._settled = asyncio.Event()  # none but those left behind (``stop``)
        self._settled.set()

    @property
    def inflight(self) -> int:
        """Items submitted and not yet finished."""
        return self._inflight

    @property
    def active_actors(self) -> int:
        return len(self._actors)

    async def submit(self, key: Hashable, item: T) -> None:
        """Run ``item`` after earlier items of ``key``; waits while ``max_inflight`` items are unfinished.

        An item whose key is idle starts at once (eagerly, in the caller): if it finishes without waiting, no
        actor is created at all. Only an item that waits gets a task, and later items of its key queue behind it.
        """
        while self._inflight >= self._max_inflight:
            room: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._room.append(room)
            try:
                await room
            finally:
                if room in self._room:  # cancelled while waiting
                    self._room.remove(room)
        # after the wait: the key may have been halted meanwhile, its actor gone, and the item would start on a
        # state without the item that failed to be stored
        if self._halted and key in self._halted:  # empty but after a failed store: no lookup per event
            return
        self._inflight += 1
        queue = self._actors.get(key)
        if queue is not None:
            queue.append(item)
            return
        stand_in = eager.EagerTask(key)
        rest = self._begin(key, item, stand_in)
        if rest is None:
            return
        queue = self._actors[key] = deque()
        self._idle.clear()
        self._settled.clear()
        # until its first step: a task cancelled before it never continues the item (``cancel`` ends it)
        self._unstarted[self._start(key, self._run(key, queue, rest, stand_in))] = rest

    def halt(self, key: Hashable) -> None:
        """Run nothing more of ``key``, queued or submitted later: one of its items failed so that the later ones
        must not pass it (the worker stops, and they run again after its restart). Its current item, if any,
        finishes."""
        self._halted.add(key)
        queue = self._actors.get(key)
        while queue:
            queue.pop()
            self._release()

    async def drain(self) -> None:
        """Wait until every submitted item is finished."""
        await self._idle.wait()

    async def stop(
        self, grace: float, patience: float = CANCEL_PATIENCE, giving_up: Callable[[], None] | None = None
    ) -> int:
        """Give the submitted items ``grace`` seconds to finish, then cancel the rest; how many were cancelled.
        ``giving_up`` runs once the grace is over, before any cancellation is delivered: what a handler that
        swallows its cancellation does next can then be told apart from what finished in time."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):  # not for keys an actor left behind holds: they wait for it, if it
                await self._settled.wait()  # ever ends (``cancel``), and a later stop does not wait for it again
        unfinished = self._inflight
        if giving_up is not None:
            giving_up()
        await self.cancel(patience)
        return unfinished

    async def cancel(self, patience: float = CANCEL_PATIENCE) -> None:
        """Stop all actors now (the worker stops; nothing may be submitted meanwhile): their unfinished items stay
        unacknowledged, and the pool is empty again.

        Queued items are dropped first: a handler that catches its cancellation and returns must not let its actor
        go on to the next one. An actor whose handler swallows every cancellation (``except BaseException`` in a
        loop) would hold the stop forever: after ``patience`` seconds it is left behind, logged once, and counted
        in flight until its current item ends; a later stop does not wait for it again, and its key's later items
        (the worker goes on after a rebalance) wait for it.
        """
        for queue in self._actors.values():
            queue.clear()
        tasks = [task for task in self._tasks if task not in self._abandoned]
        for task in tasks:
            task.cancel()
        stuck: set[asyncio.Task[None]] = set()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=patience)
            if stuck:
                log.error(
                    "%d actor(s) still running %gs after being cancelled, left behind: a handler swallows "
                    "CancelledError (catch Exception, not BaseException, and let a cancellation end the handler)",
                    len(stuck),
                    patience,
                )
                self._abandoned |= stuck
        # queued items never ran, and a task cancelled before its first step never ran _run's finally: nothing of
        # theirs was released; an actor left behind releases its one current item when (if) that ends
        for task, first in self._unstarted.items():  # cancelled before their first step: nothing continues them
            _end(self._tasks.get(task), first)
        self._unstarted.clear()
        self._actors.clear()
        self._parks.clear()
        self._abandoned = {task for task in self._abandoned if not task.done()}
        for task in self._abandoned:  # its key's next items (a rebalance gives the worker more) wait until it ends,
            self._park(self._tasks[task], task)  # also one left behind by an earlier stop
        self._inflight = len(self._abandoned)
        self._release_room()
        self._check_idle()

    def _park(self, key: Hashable, left_behind: asyncio.Task[None]) -> None:
        """Items of ``key`` submitted while its actor left behind still runs queue here, and start when it ends:
        one item at a time per key, even after a stop that could not end its actor."""
        parked: deque[T] = deque()
        self._actors[key] = parked
        self._parks.add(key)

        def resume(_: asyncio.Task[None]) -> None:
            if self._actors.get(key) is not parked:  # a later cancel dropped them
                return
            self._parks.discard(key)
            if parked:  # an actor of ours now
                self._settled.clear()
                self._start(key, self._drain(key, parked))
            else:
                del self._actors[key]
                self._check_idle()

        left_behind.add_done_callback(resume)

    def _start(self, key: Hashable, run: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(run)
        self._tasks[task] = key
        task.add_done_callback(self._forget_task)
        return task

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def _run(self, key: Hashable, queue: deque[T], first: eager.Resume[None], started: eager.EagerTask) -> None:
        task = asyncio.current_task()
        assert task is not None
        del self._unstarted[task]
        started.bind(task)  # the first item started as ``started``: from here on that is this task
        await self._drain(key, queue, first)

    async def _drain(self, key: Hashable, queue: deque[T], first: eager.Resume[None] | None = None) -> None:
        try:
            if first is not None:
                await self._finish(key, first)
            while queue:
                rest = self._begin(key, queue.popleft())
                if rest is not None:
                    await self._finish(key, rest)
        finally:
            if self._actors.get(key) is queue:
                del self._actors[key]
            self._check_idle()

    def _check_idle(self) -> None:
        if len(self._actors) == len(self._parks):
            self._settled.set()
            if not self._actors:
                self._idle.set()

    def _begin(self, key: Hashable, item: T, stand_in: eager.EagerTask | None = None) -> eager.Resume[None] | None:
        """Start ``item`` at once, in a context of its own as a task's (what a handler sets stays its own), as
        ``stand_in`` if given: what continues it if it waits, else None (finished, its slot free)."""
        try:
            done, rest = eager.start(self._process(item), stand_in, contextvars.copy_context())
        except BaseException as exc:  # process() handles its own failures; this is a last line of defence
            self._release()
            if not isinstance(exc, Exception):  # cancelled as it began: its slot is free all the same
                raise
            _unexpected(key, exc)
            return None
        if done:
            self._release()
            return None
        assert isinstance(rest, eager.Resume)
        return rest

    async def _finish(self, key: Hashable, work: Awaitable[None]) -> None:
        try:
            await work
        except Exception as exc:  # process() handles its own failures; this is a last line of defence
            _unexpected(key, exc)
        finally:
            self._release()

    def _release(self) -> None:
        self._inflight -= 1
        if self._room:
            self._release_room()

    def _release_room(self) -> None:
        """Every waiting submitter checks again (there are one or two: the stream's loops)."""
        room, self._room = self._room, []
        for waiter in room:
            if not waiter.done():
                waiter.set_result(None)


def _end(key: Hashable, item: eager.Resume[None]) -> None:
    """End an item that nothing continues any more (a no-op once it finished): cancelled where it waits, its
    finally blocks run, and what holds it (a deadline watch) lets go."""
    try:
        item.end()
    except Exception as exc:  # a finally block that waits
        _unexpected(key, exc)


def _unexpected(key: Hashable, error: Exception) -> None:
    # type, place and stack, not the message (it may quote an event body): ops/logs.py
    log.error("unexpected error processing an item of %r: %s\n%s", key, described(error), stack(error))

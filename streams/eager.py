"""Run a coroutine eagerly: step it at once, and pay for a task or a timer only if it really waits.

Most handlers never wait (they update state from the event and return), so creating a task, a queue entry and a
timer for each event would cost more than the work. ``start`` runs a coroutine until it finishes or first
suspends; a suspended one is continued by awaiting ``Resume`` (in a task, under a timeout, ...), exactly as if
it had been awaited from the start. Python 3.12's eager task factory does the same for tasks, and makes the new
task the current one while it steps it; ``EagerTask`` is that for 3.11 (through ``_enter_task``/``_leave_task``,
the hooks asyncio's own tasks use to become current). Given one, every step of the coroutine runs as it, the
first and those in the task that continues it alike: libraries that note the current task when a scope is entered
and check it when the scope is left (anyio's cancel scopes, so httpx) see one task throughout. Given a
``contextvars.Context``, every step runs in it, as a task's steps run in the task's own context.
"""

from __future__ import annotations

import asyncio
import contextvars
from asyncio.tasks import _enter_task, _leave_task
from collections.abc import Callable, Coroutine, Generator
from inspect import CORO_SUSPENDED, getcoroutinestate
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Resume(Generic[T]):
    """Awaitable continuation of a coroutine that ``start`` left suspended on ``yielded``."""

    __slots__ = ("_context", "_coro", "_task", "_yielded")

    def __init__(
        self,
        coro: Coroutine[Any, Any, T],
        yielded: Any,
        task: EagerTask | None = None,
        context: contextvars.Context | None = None,
    ) -> None:
        self._coro = coro
        self._yielded = yielded
        self._task = task
        self._context = context

    def __await__(self) -> Generator[Any, Any, T]:
        coro, value, task, context = self._coro, self._yielded, self._task, self._context
        plain = task is None and context is None
        while True:
            try:
                sent = yield value  # the awaiting task waits on what the coroutine waits on
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation or timeout: deliver it where the coroutine waits
                try:
                    value = coro.throw(exc) if plain else _run(coro.throw, exc, task, context)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent) if plain else _run(coro.send, sent, task, context)
                except StopIteration as stop:
                    return stop.value

    def end(self) -> None:
        """End the coroutine now that no task will continue it: a cancellation delivered where it waits, as the task
        would deliver it (as its stand-in, in its context), so that its cleanup runs where it was written to; closed
        if it waits again (an await in a ``finally``: nothing would drive it). A no-op once it has finished."""
        if getcoroutinestate(self._coro) != CORO_SUSPENDED:
            return
        if self._task is not None:
            self._task.cancel()  # counted, as a task's: code that reads ``cancelling()`` takes it for the task's
        try:
            _run(self._coro.throw, asyncio.CancelledError(), self._task, self._context)
        except BaseException:  # ended: cancelled, or raising on its way out
            return
        self._coro.close()


def _run(step: Callable[[Any], Any], arg: Any, task: EagerTask | None, context: contextvars.Context | None) -> Any:
    """``step(arg)`` as the coroutine's first step ran: in ``context``, as ``task`` (the current one put back
    after)."""
    if task is None:
        return context.run(step, arg) if context is not None else step(arg)
    loop = asyncio.get_running_loop()
    current = asyncio.current_task(loop)
    if current is not None:
        _leave_task(loop, current)
    _enter_task(loop, task)  # type: ignore[arg-type]  # quacks enough: see EagerTask
    try:
        return context.run(step, arg) if context is not None else step(arg)
    finally:
        try:
            _leave_task(loop, task)  # type: ignore[arg-type]
        finally:  # whatever the step did, the task that was current is current again
            if current is not None:
                _enter_task(loop, current)


class EagerTask:
    """What ``asyncio.current_task()`` is while ``start`` steps a coroutine in another task's turn.

    ``asyncio.timeout``, ``TaskGroup``, deadlines (streams/deadlines.py) and client libraries' timeouts (aiohttp's)
    note the current task when they are entered and cancel it when they expire; libraries also read its
    ``cancelling()`` count to tell a cancellation meant for them from one meant for the task. Stepped eagerly, a
    coroutine would give them the task that started it (the consumer's fetch loop), though it continues in another
    once it waits. This stand-in is bound to that other task (``bind``) and from then on is it: cancel requests
    and counts go to the task, so a count is the same whichever of the two was asked. Requests made before the
    binding are counted here and applied to the task when it is bound.
    """

    __slots__ = ("__weakref__", "_coro", "_name", "_requests", "_task")

    def __init__(self, name: object) -> None:
        self._name = name
        self._requests: list[Any] = []  # the messages of cancel requests made before the binding
        self._task: asyncio.Task[Any] | None = None
        self._coro: Coroutine[Any, Any, Any] | None = None  # what it runs (``start``)

    def bind(self, task: asyncio.Task[Any]) -> None:
        """``task`` continues the coroutine: requests go to it from now on, those made before it started included.

        Call it from inside ``task``: a task cancelled before its first step never runs its coroutine's
        ``finally`` blocks.
        """
        self._task = task
        for msg in self._requests:  # with their messages: anyio tells its own cancellations by theirs
            task.cancel(msg)
        self._requests.clear()

    def cancel(self, msg: Any = None) -> bool:
        if self._task is not None:
            return self._task.cancel(msg)
        self._requests.append(msg)
        return True

    def cancelling(self) -> int:
        return self._task.cancelling() if self._task is not None else len(self._requests)

    def uncancel(self) -> int:
        if self._task is not None:
            return self._task.uncancel()
        if self._requests:
            self._requests.pop()
        return len(self._requests)

    def done(self) -> bool:
        return self._task is not None and self._task.done()

    def get_name(self) -> str:
        return str(self._name)

    def get_coro(self) -> Coroutine[Any, Any, Any] | None:
        return self._coro

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._task.get_loop() if self._task is not None else asyncio.get_running_loop()

    # What anyio reads of a task to deliver a cancel scope's cancellation (its asyncio backend): the task's, once
    # bound; before, the stand-in is the current task, which nothing cancels that way.
    @property
    def _must_cancel(self) -> bool:
        return bool(self._task._must_cancel) if self._task is not None else False  # type: ignore[attr-defined]

    @property
    def _fut_waiter(self) -> asyncio.Future[Any] | None:
        return self._task._fut_waiter if self._task is not None else None  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        """The rest of a task's interface (``get_loop``, ``add_done_callback``, ...) is the bound task's."""
        task = object.__getattribute__(self, "_task")
        if task is None:
            raise AttributeError(f"{name!r}: the task running this coroutine has not started yet")
        return getattr(task, name)


def start(
    coro: Coroutine[Any, Any, T], task: EagerTask | None = None, context: contextvars.Context | None = None
) -> tuple[bool, T | Resume[T]]:
    """Step ``coro`` until it finishes ``(True, result)`` or suspends ``(False, Resume)``; exceptions propagate.

    With ``task``, the step runs as that task: ``asyncio.current_task()`` returns it, in this step and in those the
    ``Resume`` takes. Bind it to the task that awaits the ``Resume``, so that what it was asked reaches the
    coroutine. With ``context``, every step runs in it: what the coroutine sets stays its own.
    """
    if task is not None:
        task._coro = coro
    try:
        yielded = coro.send(None) if task is None and context is None else _run(coro.send, None, task, context)
    except StopIteration as stop:
        return True, stop.value
    return False, Resume(coro, yielded, task, context)

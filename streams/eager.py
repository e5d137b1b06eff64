"""Run a coroutine eagerly: step it at once, and pay for a task or a timer only if it really waits.

Most handlers never wait (they update state from the event and return), so creating a task, a queue entry and a
timer for each event would cost more than the work. ``start`` runs a coroutine until it finishes or first
suspends; a suspended one is continued by awaiting ``Resume`` (in a task, under a timeout, ...), exactly as if
it had been awaited from the start. Python 3.12's eager task factory does the same for tasks, and makes the new
task the current one while it steps it; ``EagerTask`` is that for 3.11 (through ``_enter_task``/``_leave_task``,
the hooks asyncio's own tasks use to become current).
"""

from __future__ import annotations

import asyncio
from asyncio.tasks import _enter_task, _leave_task
from collections.abc import Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Resume(Generic[T]):
    """Awaitable continuation of a coroutine that ``start`` left suspended on ``yielded``."""

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, T], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, T]:
        coro, value = self._coro, self._yielded
        while True:
            try:
                sent = yield value  # the awaiting task waits on what the coroutine waits on
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation or timeout: deliver it where the coroutine waits
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value

    def close(self) -> None:
        self._coro.close()


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

    __slots__ = ("_name", "_requests", "_task")

    def __init__(self, name: object) -> None:
        self._name = name
        self._requests = 0
        self._task: asyncio.Task[Any] | None = None

    def bind(self, task: asyncio.Task[Any]) -> None:
        """``task`` continues the coroutine: requests go to it from now on, those made before it started included.

        Call it from inside ``task``: a task cancelled before its first step never runs its coroutine's
        ``finally`` blocks.
        """
        self._task = task
        for _ in range(self._requests):
            task.cancel()
        self._requests = 0

    def cancel(self, msg: Any = None) -> bool:
        if self._task is not None:
            return self._task.cancel(msg)
        self._requests += 1
        return True

    def cancelling(self) -> int:
        return self._task.cancelling() if self._task is not None else self._requests

    def uncancel(self) -> int:
        if self._task is not None:
            return self._task.uncancel()
        if self._requests:
            self._requests -= 1
        return self._requests

    def done(self) -> bool:
        return self._task is not None and self._task.done()

    def get_name(self) -> str:
        return str(self._name)


def start(coro: Coroutine[Any, Any, T], task: EagerTask | None = None) -> tuple[bool, T | Resume[T]]:
    """Step ``coro`` until it finishes ``(True, result)`` or suspends ``(False, Resume)``; exceptions propagate.

    With ``task``, the step runs as that task: ``asyncio.current_task()`` returns it. Bind it to the task that
    awaits the ``Resume``, so that what it was asked reaches the coroutine.
    """
    if task is None:
        return _step(coro)
    loop = asyncio.get_running_loop()
    outer = asyncio.current_task(loop)
    if outer is not None:
        _leave_task(loop, outer)
    _enter_task(loop, task)  # type: ignore[arg-type]  # quacks enough: see EagerTask
    try:
        return _step(coro)
    finally:
        try:
            _leave_task(loop, task)  # type: ignore[arg-type]
        finally:  # whatever the step did, the task that called start is current again
            if outer is not None:
                _enter_task(loop, outer)


def _step(coro: Coroutine[Any, Any, T]) -> tuple[bool, T | Resume[T]]:
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, Resume(coro, yielded)

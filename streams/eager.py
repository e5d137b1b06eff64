"""Run a coroutine eagerly: step it at once, and pay for a task or a timer only if it really waits.

Most handlers never wait (they update state from the event and return), so creating a task, a queue entry and a
timer for each event would cost more than the work. ``start`` runs a coroutine until it finishes or first
suspends; a suspended one is continued by awaiting ``Resume`` (in a task, under a timeout, ...), exactly as if
it had been awaited from the start. Python 3.12's eager task factory does the same for tasks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_DONE = object()


class Resume(Generic[T]):
    """Awaitable continuation of a coroutine that ``start`` left suspended on what it yielded."""

    __slots__ = ("_cancelling", "_coro", "_waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, T], yielded: Any) -> None:
        self._coro = coro
        self._waiting_on = yielded  # what the coroutine waits on now (an asyncio future, or None for a bare yield)
        self._cancelling = False

    def cancel(self) -> None:
        """Raise CancelledError in the coroutine where it waits, in whichever task awaits this.

        As ``Task.cancel`` does: the future it waits on is cancelled, which wakes the awaiting task with the error;
        if there is none to cancel (a bare yield, or it is done already), the error is thrown in when the task
        next resumes the coroutine. A deadline needs this: ``asyncio.timeout`` cancels the task that entered it,
        and a coroutine started eagerly enters it in one task and continues in another (streams/deadlines.py).
        """
        self._cancelling = True
        waiting_on = self._waiting_on
        if isinstance(waiting_on, asyncio.Future):
            waiting_on.cancel()

    def __await__(self) -> Generator[Any, Any, T]:
        coro = self._coro
        while True:
            try:
                sent = yield self._waiting_on  # the awaiting task waits on what the coroutine waits on
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation or timeout: deliver it where the coroutine waits
                self._cancelling = False
                try:
                    self._waiting_on = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                if self._cancelling:
                    self._cancelling = False
                    self._waiting_on = coro.throw(asyncio.CancelledError())
                else:
                    self._waiting_on = coro.send(sent)
            except StopIteration as stop:
                return stop.value

    def close(self) -> None:
        self._coro.close()


def start(coro: Coroutine[Any, Any, T]) -> tuple[bool, T | Resume[T]]:
    """Step ``coro`` until it finishes ``(True, result)`` or suspends ``(False, Resume)``; exceptions propagate."""
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, Resume(coro, yielded)

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
        if asyncio.isfuture(waiting_on):
            waiting_on.cancel()  # even if it is done: as Task.cancel, the coroutine gets CancelledError, not its result

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


class EagerTask:
    """What ``asyncio.current_task()`` is while ``start`` steps a coroutine in another task's turn.

    ``asyncio.timeout``, ``TaskGroup`` and client libraries' timeouts (aiohttp's) note the current task when they
    are entered and cancel it when they expire. Stepped eagerly, a coroutine would give them the task that started
    it (the consumer's fetch loop), though it continues in another once it waits. This stand-in takes their
    requests and forwards them to the coroutine where it waits (``Resume.cancel``), in whichever task runs it, and
    counts them (``cancelling``, ``uncancel``) as a Task does, so they tell their own expiry from a cancellation
    that came from elsewhere.
    """

    __slots__ = ("_name", "_requests", "_rest")

    def __init__(self, name: object) -> None:
        self._name = name
        self._requests = 0
        self._rest: Resume[Any] | None = None

    def cancel(self, msg: Any = None) -> bool:
        self._requests += 1
        if self._rest is not None:
            self._rest.cancel()
        return True

    def cancelling(self) -> int:
        return self._requests

    def uncancel(self) -> int:
        if self._requests:
            self._requests -= 1
        return self._requests

    def done(self) -> bool:
        return False

    def get_name(self) -> str:
        return str(self._name)


def start(coro: Coroutine[Any, Any, T], task: EagerTask | None = None) -> tuple[bool, T | Resume[T]]:
    """Step ``coro`` until it finishes ``(True, result)`` or suspends ``(False, Resume)``; exceptions propagate.

    With ``task``, the step runs as that task: ``asyncio.current_task()`` returns it, and cancel requests made of
    it reach the coroutine once it waits.
    """
    if task is None:
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            return True, stop.value
        return False, Resume(coro, yielded)
    loop = asyncio.get_running_loop()
    outer = asyncio.current_task(loop)
    if outer is not None:
        _leave_task(loop, outer)
    _enter_task(loop, task)  # type: ignore[arg-type]  # quacks enough: see EagerTask
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    finally:
        try:
            _leave_task(loop, task)  # type: ignore[arg-type]
        finally:  # whatever the step did, the task that called start is current again
            if outer is not None:
                _enter_task(loop, outer)
    rest = task._rest = Resume(coro, yielded)
    if task._requests:  # cancelled while it ran (by itself): as a Task, it gets CancelledError where it waits
        rest.cancel()
    return False, rest

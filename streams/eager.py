"""Run a coroutine eagerly: step it at once, and pay for a task or a timer only if it really waits.

Most handlers never wait (they update state from the event and return), so creating a task, a queue entry and a
timer for each event would cost more than the work. ``start`` runs a coroutine until it finishes or first
suspends; a suspended one is continued by awaiting ``Resume`` (in a task, under a timeout, ...), exactly as if
it had been awaited from the start. Python 3.12's eager task factory does the same for tasks.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_DONE = object()


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


def start(coro: Coroutine[Any, Any, T]) -> tuple[bool, T | Resume[T]]:
    """Step ``coro`` until it finishes ``(True, result)`` or suspends ``(False, Resume)``; exceptions propagate."""
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, Resume(coro, yielded)

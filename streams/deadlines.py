"""Deadlines for handlers that wait (HANDLER_TIMEOUT), kept by one periodic check for all of them.

A handler that waits is cancelled, on expiry, in the task that runs it, as ``asyncio.timeout`` would do and with
its accounting (``cancelling``/``uncancel``), so code that reads the count (aiohttp does) sees the cancellation as
the task's own. ``asyncio.timeout`` itself cannot be used here: it binds to the task that enters it, and a
handler starts eagerly in the task that submits its event (the consumer's fetch loop, streams/actors.py); the
current task there is an ``eager.EagerTask`` standing for the actor task that will continue the handler.
Instead of a timer per waiting handler there is a dict entry, checked every second (every tenth of the timeout
if that is shorter): an attempt fails at most that much later than its deadline.
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

from streams.eager import EagerTask


class _Watch(NamedTuple):
    deadline: float
    task: asyncio.Task[Any] | EagerTask  # what runs the handler, and so what to cancel
    cancelling: int  # the task's cancel requests when the watch began: more at the end came from elsewhere


class Deadlines:
    """Waiting handlers and when each must be done; ``watch`` one, ``forget`` it when it is done."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._resolution = min(1.0, timeout / 10)
        self._waiting: dict[object, _Watch] = {}  # in order of deadline: all have the same timeout
        self._expired: dict[object, _Watch] = {}  # cancelled by the check, not forgotten yet
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, waiting: object) -> None:
        """The current task, waiting on ``waiting``, must be done with it within the timeout, or be cancelled."""
        loop = asyncio.get_running_loop()
        task: asyncio.Task[Any] | EagerTask | None = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("a deadline needs a task to cancel")
        self._waiting[waiting] = _Watch(loop.time() + self.timeout, task, task.cancelling())
        if self._timer is None or self._loop is not loop:  # not running, or left behind by a closed loop
            self._loop = loop
            self._timer = loop.call_later(self._resolution, self._check)

    def forget(self, waiting: object) -> bool:
        """Stop watching ``waiting``; True if its deadline cancelled the task and nothing else did."""
        if self._waiting.pop(waiting, None) is not None:
            return False
        watch = self._expired.pop(waiting, None)
        if watch is None:
            return False
        return watch.task.uncancel() <= watch.cancelling  # as asyncio.timeout: a request left over came from elsewhere

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            now = loop.time()
            expired = []
            for waiting, watch in self._waiting.items():
                if watch.deadline > now:
                    break
                expired.append(waiting)
            for waiting in expired:
                watch = self._expired[waiting] = self._waiting.pop(waiting)
                watch.task.cancel()
        finally:  # whatever happened, later deadlines are still kept
            self._timer = loop.call_later(self._resolution, self._check) if self._waiting else None

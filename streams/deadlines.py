"""Deadlines for handlers that wait (HANDLER_TIMEOUT), kept by one periodic check for all of them.

``asyncio.timeout`` binds to the task that enters it. A handler starts eagerly in the task that submits its event
(the consumer's fetch loop, streams/actors.py) and, once it waits, continues in its actor's task: on expiry
``asyncio.timeout`` cancelled the fetch loop and left the handler waiting (tests/test_handler_timeouts.py). Here an
expired handler is interrupted where it waits (``eager.Resume.cancel``), in whichever task awaits it. Instead of
a timer per waiting handler there is a dict entry, checked every second (every tenth of the timeout if that is
shorter): an attempt fails at most that much later than its deadline.
"""

from __future__ import annotations

import asyncio
from typing import Any

from streams.eager import Resume


class Deadlines:
    """Waiting handlers and when each must be done; ``watch`` one, ``forget`` it when it is done."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._resolution = min(1.0, timeout / 10)
        self._waiting: dict[Resume[Any], float] = {}  # in order of deadline: all have the same timeout
        self._expired: set[Resume[Any]] = set()  # cancelled by the check, not forgotten yet
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, waiting: Resume[Any]) -> None:
        """``waiting`` must finish within the timeout from now, or be cancelled."""
        loop = asyncio.get_running_loop()
        self._waiting[waiting] = loop.time() + self.timeout
        if self._timer is None or self._loop is not loop:  # not running, or left behind by a closed loop
            self._loop = loop
            self._timer = loop.call_later(self._resolution, self._check)

    def forget(self, waiting: Resume[Any]) -> bool:
        """Stop watching ``waiting``; True if it was cancelled for being past its deadline."""
        if self._waiting.pop(waiting, None) is not None:
            return False
        if waiting in self._expired:
            self._expired.discard(waiting)
            return True
        return False

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            now = loop.time()
            expired = []
            for waiting, deadline in self._waiting.items():
                if deadline > now:
                    break
                expired.append(waiting)
            for waiting in expired:
                del self._waiting[waiting]
                self._expired.add(waiting)
                waiting.cancel()
        finally:  # whatever happened, later deadlines are still kept
            self._timer = loop.call_later(self._resolution, self._check) if self._waiting else None

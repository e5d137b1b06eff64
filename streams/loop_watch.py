"""``hookstream_event_loop_lag_seconds``: how late the worker's event loop runs a short timer.

Every object shares one event loop. A handler that blocks it (``time.sleep``, a synchronous HTTP client, heavy CPU
work without an ``await``) stalls every other object, and no deadline can interrupt it: ``HANDLER_TIMEOUT`` is
kept by the same loop. The worker's own batches hold the loop too, for a fetch at a time (about 0.1 s for 5,000
records), so only seconds of lateness mean trouble.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

#: Seconds between the timer's wake-ups; the gauge is updated every WINDOW seconds with the worst lateness of the
#: last SPAN. SPAN covers a scrape interval (the chart's is 30 s): a block between two scrapes shows at the next one
#: (over the last WINDOW alone, a scrape every 30 s saw a sixth of the blocks).
TICK = 0.25
WINDOW = 5.0
SPAN = 60.0


async def watch_loop(gauge: Any, tick: float = TICK, window: float = WINDOW, span: float = SPAN) -> None:
    """Set ``gauge``, every ``window`` seconds, to the worst lateness of a ``tick``-second sleep over the last
    ``span`` seconds, for ever."""
    loop = asyncio.get_running_loop()
    recent: deque[float] = deque(maxlen=max(1, round(span / window)))  # the worst of each of the last windows
    worst = 0.0
    window_ends = loop.time() + window
    while True:
        due = loop.time() + tick
        await asyncio.sleep(tick)
        now = loop.time()
        worst = max(worst, now - due)
        if now >= window_ends:
            recent.append(worst)
            gauge.set(max(recent))
            worst = 0.0
            window_ends = now + window

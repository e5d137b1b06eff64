"""The worker's event loop lag: a handler that blocks the loop shows as about that long a lateness. A real event
loop and a real block; the bounds asserted are the one the block itself guarantees (a lower one), and that a later
window without the block reports less."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Gauge

from streams.loop_watch import watch_loop


def _run(block: float) -> list[float]:
    """Watch the loop (0.05 s ticks, 0.5 s windows) while it is blocked once for ``block`` seconds; what the gauge
    said at each of 20 scrapes after the block (two windows at least)."""
    registry = CollectorRegistry()
    gauge = Gauge("lag", "test", registry=registry)
    reported: list[float] = []

    async def main() -> None:
        watcher = asyncio.create_task(watch_loop(gauge, tick=0.05, window=0.5))
        await asyncio.sleep(0.2)
        time.sleep(block)  # noqa: ASYNC251  # a blocking handler, on purpose
        for _ in range(20):  # two windows at least, sampled as a scrape would
            await asyncio.sleep(0.05)
            reported.append(registry.get_sample_value("lag") or 0.0)
        watcher.cancel()

    asyncio.run(main())
    return reported


def test_a_blocked_loop_is_reported_late_by_about_the_block() -> None:
    reported = _run(block=0.8)
    assert max(reported) >= 0.7  # the timer due during the block ran after it: at least the block, less a tick
    assert reported[-1] < max(reported)  # a later window without the block reports afresh: the worst is per window

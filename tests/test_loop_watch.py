"""The worker's event loop lag: a handler that blocks the loop shows as about that long a lateness. A real event
loop and a real block; the bounds asserted are the one the block itself guarantees (a lower one), and that a later
window without the block reports less."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Gauge

from streams.loop_watch import watch_loop


def _run(block: float) -> list[tuple[float, float]]:
    """Watch the loop (0.05 s ticks, 0.5 s windows, the worst of the last 1 s) while it is blocked once for ``block``
    seconds; what the gauge said at each of 40 scrapes after the block (four windows at least), and when."""
    registry = CollectorRegistry()
    gauge = Gauge("lag", "test", registry=registry)
    reported: list[tuple[float, float]] = []

    async def main() -> None:
        watcher = asyncio.create_task(watch_loop(gauge, tick=0.05, window=0.5, span=1.0))
        await asyncio.sleep(0.2)
        time.sleep(block)  # noqa: ASYNC251  # a blocking handler, on purpose
        for _ in range(40):  # four windows at least, sampled as a scrape would
            await asyncio.sleep(0.05)
            reported.append((time.monotonic(), registry.get_sample_value("lag") or 0.0))
        watcher.cancel()

    asyncio.run(main())
    return reported


def test_a_blocked_loop_is_reported_late_by_about_the_block() -> None:
    reported = _run(block=0.8)
    worst = max(value for _, value in reported)
    assert worst >= 0.7  # the timer due during the block ran after it: at least the block, less a tick
    # reported for the whole span (a scrape up to a span later sees it), not only for the window after the block
    held = [at for at, value in reported if value == worst]
    assert held[-1] - held[0] >= 0.7, reported  # over one 0.5 s window
    assert reported[-1][1] < worst  # once the span has passed without another block, it reports afresh

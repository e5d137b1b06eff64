"""The dead-letter count says "unknown" (NaN) once it keeps failing, instead of holding its last count: an alert on a
stale count would fire (or stay quiet) on what is no longer true."""

from __future__ import annotations

import asyncio
import logging
import math

import pytest

from ops.process import free_port
from streams.lag import _FAILURES_TOLERATED, DeadLetterBacklog
from streams.metrics import WorkerMetrics


def _pending(metrics: WorkerMetrics) -> float:
    value = metrics.registry.get_sample_value("hookstream_dead_letters_pending")
    assert value is not None
    return value


def test_a_count_that_keeps_failing_turns_unknown_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    metrics = WorkerMetrics()
    metrics.dead_letters_pending.set(5)  # the last count that succeeded
    unreachable = {"bootstrap_servers": f"127.0.0.1:{free_port()}"}  # nothing listens there
    backlog = DeadLetterBacklog(None, metrics, "stripe.dlq", "hookstream-replay", unreachable)

    async def measure(times: int) -> None:
        for _ in range(times):
            await backlog._measure()

    with caplog.at_level(logging.DEBUG, logger="streams.lag"):
        asyncio.run(measure(_FAILURES_TOLERATED - 1))
        assert _pending(metrics) == 5  # a failure or two: a broker blip, the count stands
        asyncio.run(measure(3))
    assert math.isnan(_pending(metrics))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "streams.lag"]
    assert len(warnings) == 1 and f"not counted {_FAILURES_TOLERATED} times in a row" in warnings[0].getMessage()

"""The worker's fetch loop (``BatchingConsumer._drain_messages``) drops a fetch that a rebalance overtook.

It asks for the next fetch before it processes the current one, so a fetch can come back after a rebalance began
(the flow paused) or even ended (a new generation). Its records may then be another assignment's: they must not
reach the actors, and the partitions must be sought back to their committed offsets. The loop runs here over a
scripted consumer thread (the records each fetch returns, and what happens to the group while it waits).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from streams.consumer import BatchingConsumer

TOPIC = "stripe.charge"
TP0 = TP(TOPIC, 0)


class _Message:
    """What the loop reads and sets on a Faust message (hashable: Faust tracks unacked ones in a set)."""

    def __init__(self, offset: int, generation_id: int) -> None:
        self.offset, self.generation_id, self.tracked = offset, generation_id, False


class _ScriptedConsumer(BatchingConsumer):
    """The batching consumer without Faust's consumer thread: each fetch runs the next step of ``script``."""

    def __init__(self, script: list[Callable[[_ScriptedConsumer], list[int]]]) -> None:  # no super(): no transport
        self.script = script
        self.seeks = 0
        self.sunk: list[Any] = []
        self.batch_topics = frozenset({TOPIC})
        self.batch_sink = self._sink
        self._stopped = asyncio.Event()
        self.flow_active = True
        self.app = SimpleNamespace(
            consumer_generation_id=1,
            monitor=SimpleNamespace(track_tp_end_offset=lambda tp, offset: None),
            topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
        )
        self.transport = SimpleNamespace(app=SimpleNamespace(should_stop=False))
        self._buffered_partitions: set[TP] = set()
        self._unacked_messages: set[Any] = set()  # type: ignore[assignment]
        self._read_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self._commit_bases: dict[TP, int] = {}

    def __repr__(self) -> str:  # Faust's needs attributes this stand-in lacks
        return f"<_ScriptedConsumer seeks={self.seeks} sunk={len(self.sunk)}>"

    @property
    def should_stop(self) -> bool:
        return self._stopped.is_set()

    async def _wait_next_records(self, timeout: float) -> tuple[dict[TP, list[Any]], None]:  # noqa: ASYNC109 - Faust's signature
        if not self.script:
            raise AssertionError("fetched more than the script holds")
        await asyncio.sleep(0)  # the consumer thread's round trip, during which the group may change
        offsets = self.script.pop(0)(self)
        return {TP0: [SimpleNamespace(offset=offset) for offset in offsets]}, None

    def _to_message(self, tp: TP, record: Any) -> Any:
        return _Message(record.offset, self.app.consumer_generation_id)

    def highwater(self, tp: TP) -> int:
        return 100

    async def perform_seek(self) -> None:
        self.seeks += 1
        self._read_offset.clear()  # as Faust's seek: reading starts again from the committed offsets
        if not self.script:
            self._stopped.set()

    async def _sink(self, batch: list[Any]) -> None:
        self.sunk.extend(batch)


def _rebalanced(consumer: _ScriptedConsumer) -> list[int]:
    """Records fetched for generation 1 come back after a rebalance ended in generation 2."""
    consumer.app.consumer_generation_id += 1
    return [0, 1, 2]


def _fine(consumer: _ScriptedConsumer) -> list[int]:
    return [0, 1, 2]


def _paused(consumer: _ScriptedConsumer) -> list[int]:
    """The fetch asked ahead comes back while a rebalance has paused the flow."""
    consumer.flow_active = False
    return [3, 4]


def test_a_fetch_overtaken_by_a_rebalance_is_dropped_and_the_partitions_sought_back() -> None:
    consumer = _ScriptedConsumer([_rebalanced, _fine, _paused])

    async def run() -> None:
        fetcher = SimpleNamespace(_stopped=asyncio.Event())
        await asyncio.wait_for(consumer._drain_messages(fetcher), timeout=5)

    asyncio.run(run())
    assert consumer.seeks == 2  # after the new generation's fetch, and after the paused one
    assert [message.offset for message in consumer.sunk] == [0, 1, 2]  # only the fetch made in its generation
    assert consumer._unacked_messages == set(consumer.sunk)  # dropped records are not awaited by the rebalance

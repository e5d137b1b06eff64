"""Faust's consumer with a batch path for event topics.

Faust hands every fetched record through ``Service.wait_first`` (two tasks per record), the conductor (flow
control, a lock, an Event, a queue) and the stream iterator (a loop cycle, sensors) before an agent sees it:
most of a worker's time, measured (ARCHITECTURE.md). For the event topics, this consumer skips all of that:
each fetch's records go to the actors in one call, with the bookkeeping Faust needs for acks and commits kept
(read offsets, gaps, the set of unacked records). Every other topic (table changelogs during recovery, Faust's
own) takes Faust's path unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import Message
from mode import Service

BatchSink = Callable[[list[Message]], Awaitable[None]]


class BatchingConsumer(AIOKafkaConsumer):
    """Delivers records of ``batch_topics`` to ``batch_sink`` a fetch at a time (set both before it starts)."""

    batch_topics: frozenset[str] = frozenset()
    batch_sink: BatchSink | None = None

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - exercised by the worker tests
        # Faust's own loop (faust/transport/consumer.py), with records of batch topics collected, not dispatched.
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        acks_enabled_for = self.app.topics.acks_enabled_for
        unacked_add = self._unacked_messages.add
        batch_topics = self.batch_topics
        sink = self.batch_sink
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                batch: list[Message] = []
                await asyncio.sleep(0)
                async for tp, message in getmany(timeout=1.0):
                    offset = message.offset
                    read_offset = get_read_offset(tp)
                    if read_offset is not None and offset < read_offset:
                        continue  # already seen (Faust drops these too)
                    if read_offset and offset - read_offset > 1 and acks_enabled_for(message.topic):
                        await self._add_gap(tp, read_offset + 1, offset)
                    if sink is not None and message.topic in batch_topics:
                        message.tracked = True
                        unacked_add(message)  # pending ack: graceful shutdown and rebalances wait for it
                        batch.append(message)
                    else:
                        if batch:  # keep order with records of other topics
                            await sink(batch)  # type: ignore[misc]
                            batch = []
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                    set_read_offset(tp, offset)
                if batch:
                    await sink(batch)  # type: ignore[misc]
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise

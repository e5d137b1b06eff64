"""The table writer's changelog batches, against a stand-in for aiokafka's producer (the worker tests and the
soak run it against a real broker): order per partition, flushes that do not wait for a lull, back-pressure,
and a refused batch that stops commits."""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from itertools import accumulate
from typing import Any

import pytest
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import RecordMetadata
from faust.transport.drivers.aiokafka import Producer

from streams import eager
from streams.state import StateTooLarge
from streams.table import ChangelogLost, FlushingProducer, TableWriter


class _Producer:
    """aiokafka's producer as the writer uses it: ``create_batch`` and ``send_batch``, one batch with the
    producer per partition at a time (``send_batch`` waits while the previous one is undelivered)."""

    def __init__(self, batch_size: int = 1 << 20, delay: float = 0.002, refuse: int | None = None) -> None:
        self.batch_size, self.delay, self.refuse = batch_size, delay, refuse
        self.sent: list[tuple[int, list[bytes]]] = []  # (partition, values) in the order handed over
        self._previous: dict[int, asyncio.Future[Any]] = {}

    def _ensure_producer(self) -> _Producer:
        return self

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(self.batch_size, 0)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        previous = self._previous.get(partition)
        if previous is not None:
            await asyncio.shield(previous)  # as add_batch: wait for the partition's pending batch
        values = [record.value for record in _records(batch)]
        self.sent.append((partition, values))
        delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        number = len(self.sent)

        def deliver() -> None:
            if self.refuse == number:
                delivery.set_exception(RuntimeError("broker refused the batch"))
            else:
                delivery.set_result(RecordMetadata(topic, partition, None, 100, -1, 0, 0))

        asyncio.get_running_loop().call_later(self.delay, deliver)
        self._previous[partition] = delivery
        return delivery


def _records(batch: BatchBuilder) -> list[Any]:
    from aiokafka.record.default_records import DefaultRecordBatch

    return list(DefaultRecordBatch(bytes(batch._build())))


class _Store(dict[bytes, bytes]):
    persisted: dict[Any, int]

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        self.persisted = {**getattr(self, "persisted", {}), tp: offset}


class _Table:
    def __init__(self) -> None:
        self.data = _Store()
        self.changelog_topic = type("Topic", (), {"get_topic_name": lambda self: "objects-changelog"})()


class _App:
    def __init__(self, producer: _Producer) -> None:
        self.producer = producer
        self.crashed: list[BaseException] = []

    async def crash(self, error: BaseException) -> None:
        self.crashed.append(error)


def _writer(producer: _Producer) -> tuple[TableWriter, _App, _Table]:
    app, table = _App(producer), _Table()
    return TableWriter(app, table, max_record_bytes=1 << 20), app, table


def test_batches_of_a_partition_reach_the_producer_in_order_and_are_confirmed() -> None:
    producer = _Producer(batch_size=2_000)  # a few records per batch: many batches per partition

    async def run() -> TableWriter:
        writer, _, table = _writer(producer)
        for i in range(300):
            await writer.put(b"k%d" % (i % 7), b"v%05d" % i + b"." * 200, i % 3)
            if i % 50 == 0:
                await asyncio.sleep(0)  # a fetch ends: open batches are handed over
        await writer.flush()
        await asyncio.sleep(0.05)  # deliveries
        assert table.data[b"k6"].startswith(b"v%05d" % max(i for i in range(300) if i % 7 == 6))
        return writer

    writer = asyncio.run(run())
    for partition in range(3):
        values = [v for p, batch in producer.sent if p == partition for v in batch]
        assert values == [b"v%05d" % i + b"." * 200 for i in range(300) if i % 3 == partition]
    assert len(producer.sent) > 30 and writer.consistent


def test_flush_does_not_wait_for_batches_opened_after_it() -> None:
    """Under steady traffic a partition always has an open batch; a commit's flush must still return."""
    producer = _Producer(delay=0.005)

    async def run() -> int:
        writer, _, _ = _writer(producer)
        stop = asyncio.Event()

        async def traffic() -> None:
            i = 0
            while not stop.is_set():
                await writer.put(b"k%d" % i, b"v", i % 2)
                i += 1
                if i % 20 == 0:
                    await asyncio.sleep(0.001)

        feeding = asyncio.create_task(traffic())
        await asyncio.sleep(0.05)
        handed_before = len(producer.sent)
        await asyncio.wait_for(writer.flush(), timeout=10)  # hangs (and fails) if it waits for a lull
        stop.set()
        await feeding
        await writer.flush()
        return handed_before

    assert asyncio.run(run()) >= 1


def test_a_put_waits_only_when_a_full_batch_already_waits_for_the_producer() -> None:
    producer = _Producer(batch_size=1_000, delay=0.01)

    async def run() -> list[int]:
        writer, _, _ = _writer(producer)
        handed = []
        for i in range(40):  # ~5 records per batch, one partition: each full batch waits for the previous
            await writer.put(b"k", b"%03d" % i + b"." * 180, 0)
            handed.append(len(producer.sent))
        await writer.flush()
        return handed

    handed = asyncio.run(run())
    assert handed[-1] >= 6  # batches were handed over while putting, not all at the end
    # a record of batch k returned only once batches 0..k-2 were handed over: one full batch may wait for the
    # sender while the next fills, no more
    ends = list(accumulate(len(values) for _, values in producer.sent))
    assert ends[-1] == 40
    assert all(handed[i] >= bisect_right(ends, i) - 1 for i in range(40)), (handed, ends)
    assert any(handed[i] == bisect_right(ends, i) - 1 for i in range(40)), (handed, ends)  # and one did wait


def test_the_puts_after_a_full_batch_do_not_wait_while_it_alone_waits_for_the_sender() -> None:
    """Records are put one after another in the fetch loop's turn (streams/eager.py), before the sender can run:
    a put that suspends becomes an actor task. Once a batch fills, the next records of the fetch go to the next
    batch at once; only a put that finds that one full too waits."""
    producer = _Producer(batch_size=1_000, delay=0.01)

    async def run() -> tuple[list[bool], bool]:
        writer, _, _ = _writer(producer)
        finished = []
        for i in range(8):  # batch 0 takes 4 records, batch 1 the next 4
            done, _ = eager.start(writer.put(b"k", b"%03d" % i + b"." * 180, 0))
            finished.append(done)
        ninth_done, rest = eager.start(writer.put(b"k", b"008" + b"." * 180, 0))  # batch 1 full, batch 0 waiting
        if isinstance(rest, eager.Resume):
            await rest
        await writer.flush()
        return finished, ninth_done

    finished, ninth_done = asyncio.run(run())
    assert finished == [True] * 8
    assert not ninth_done
    assert [len(values) for _, values in producer.sent] == [4, 4, 1]


def test_a_refused_batch_stops_commits_and_the_worker() -> None:
    producer = _Producer(refuse=1)

    async def run() -> tuple[TableWriter, _App]:
        writer, app, _ = _writer(producer)
        await writer.put(b"k", b"v1", 0)
        await writer.flush()
        await asyncio.sleep(0.05)  # the refusal arrives
        with pytest.raises(ChangelogLost):
            writer.raise_if_lost()  # what FlushingProducer.flush does after the producer's flush
        return writer, app

    writer, app = asyncio.run(run())
    assert not writer.consistent
    assert [str(e) for e in app.crashed] == ["broker refused the batch"]


def test_the_producers_flush_raises_after_itself_when_a_changelog_batch_was_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiokafka's flush does not raise, and Faust commits offsets right after it: ``FlushingProducer.flush`` must
    raise once a batch was refused, after the producer's own flush, or a commit would pass states never stored."""
    flushed: list[str] = []

    async def producer_flush(self: Producer) -> None:
        flushed.append("producer")

    monkeypatch.setattr(Producer, "flush", producer_flush)

    async def run() -> None:
        writer, _, _ = _writer(_Producer(refuse=1))
        await writer.put(b"k", b"v", 0)
        await writer.flush()
        await asyncio.sleep(0.05)  # the refusal arrives
        producer = object.__new__(FlushingProducer)  # its flush alone: no Faust app or aiokafka client behind it
        producer.table_writer = writer
        with pytest.raises(ChangelogLost):
            await producer.flush()

    asyncio.run(run())
    assert flushed == ["producer"]


class _Stopped(_Producer):
    """A producer that cannot take the first batch handed to it (stopped, a send error); it would take the rest."""

    def __init__(self, batch_size: int = 1 << 20) -> None:
        super().__init__(batch_size)
        self.refused_one = False

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        if not self.refused_one:
            self.refused_one = True
            raise RuntimeError("producer stopped")
        return await super().send_batch(batch, topic, partition=partition)


def _put_two_batches(writer: TableWriter) -> None:
    """Eight records of partition 0 without waiting: batch 0 takes 4, batch 1 the next 4 (1,000-byte batches)."""
    for i in range(8):
        done, _ = eager.start(writer.put(b"k%d" % i, b"%03d" % i + b"." * 180, 0))
        assert done


def test_a_batch_the_producer_cannot_take_fails_the_partitions_later_batches_and_stops_commits() -> None:
    """A batch that cannot be handed over (the producer stopped, a send error) loses its states to the changelog,
    and those of the partition's next batches, which can no longer follow it in order: commits stop and the
    worker crashes."""
    producer = _Stopped(batch_size=1_000)

    async def run() -> tuple[TableWriter, _App]:
        writer, app, _ = _writer(producer)
        _put_two_batches(writer)
        with pytest.raises(ChangelogLost):
            await writer.flush()
        with pytest.raises(ChangelogLost):
            writer.raise_if_lost()
        await writer.flush()  # a later flush finds nothing left to hand over
        return writer, app

    writer, app = asyncio.run(run())
    assert not writer.consistent and [str(e) for e in app.crashed] == ["producer stopped"]
    assert producer.sent == []  # batch 1 did not follow the lost batch 0 to the producer


def test_a_put_waiting_for_a_batch_that_is_lost_raises_and_leaves_the_store_as_it_was() -> None:
    """A put that finds two batches of its partition not yet with the producer waits for the earlier one; if that
    one cannot be handed over, the put raises (StateNotStored for the processor) and its value is not stored: the
    store is never ahead of the changelog."""

    async def run() -> tuple[_Table, BaseException | None]:
        writer, _, table = _writer(_Stopped(batch_size=1_000))
        _put_two_batches(writer)
        try:
            await writer.put(b"k8", b"008" + b"." * 180, 0)  # batch 1 full, batch 0 not handed over: waits
        except ChangelogLost as exc:
            return table, exc
        return table, None

    table, error = asyncio.run(run())
    assert isinstance(error, ChangelogLost)
    assert b"k8" not in table.data and b"k7" in table.data


def test_a_batch_the_producer_drops_unsent_stops_commits() -> None:
    """The producer stopped with a batch unsent (its delivery cancelled): the states in it are not in the changelog,
    so nothing may be committed past them; the local state is rebuilt at the next start (not consistent)."""

    class Dropping(_Producer):
        async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
            delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(0.005, delivery.cancel)
            return delivery

    async def run() -> TableWriter:
        writer, _, _ = _writer(Dropping())
        await writer.put(b"k", b"v", 0)
        await writer.flush()
        await asyncio.sleep(0.05)  # the cancellation arrives
        with pytest.raises(ChangelogLost):
            writer.raise_if_lost()
        return writer

    assert not asyncio.run(run()).consistent


def test_check_passes_a_record_at_the_limit_and_refuses_one_byte_over() -> None:
    """What the processor asks before it emits or puts anything (tests/test_emit.py: such a state is never put)."""
    writer, _, table = _writer(_Producer())  # a changelog record (key and value) of at most 1 MiB
    writer.check(b"k", b"x" * ((1 << 20) - 1))
    with pytest.raises(StateTooLarge, match="limit of a changelog record"):
        writer.check(b"k", b"x" * (1 << 20))
    with pytest.raises(StateTooLarge, match="limit of a changelog record"):
        writer.check(b"k", b"x" * (2 << 20))
    assert b"k" not in table.data and writer.consistent

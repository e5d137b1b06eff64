"""The Faust app: one agent over every event topic that has handlers, an actor per object id inside it, the
``objects`` table, and the worker's web endpoints (``/objects/<id>``, ``/healthz``, ``/metrics``).

Run it with ``hookstream worker`` (streams/worker.py), not Faust's own CLI, which would skip what the command
adds around the app: topic checks, the data-directory lock and clean-stop marker, GC settings. Importing this
module builds the app (Faust apps are module-level by design); nothing connects until a worker starts.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, cast

import faust
from faust.streams import _current_event  # the table's changelog partition comes from the current event
from faust.types import ConsumerT, Message
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ops.kafka import client_options, faust_broker_options, topic_configs
from ops.settings import Settings
from streams.actors import ActorPool
from streams.consumer import BatchingConsumer
from streams.lag import DeadLetterBacklog, LagReporter
from streams.loop_watch import watch_loop
from streams.metrics import WorkerMetrics
from streams.processor import EventProcessor, NoLongerOurs, RetryPolicy, StateNotStored
from streams.registry import registry
from streams.routing import ForwardingRouter, worker_ready
from streams.state import Outcome
from streams.table import FlushingProducer, TableWriter

log = logging.getLogger(__name__)

settings = Settings.from_env()
registry.discover(settings.handler_modules)
metrics = WorkerMetrics()
_web_host: dict[str, Any] = {"web_host": settings.worker_web_host} if settings.worker_web_host else {}
#: the worker producer's request limit: room for a dead letter of the largest record the gateway publishes, with its
#: headers, and for a full changelog batch (what the brokers take is KAFKA_MAX_MESSAGE_BYTES: records are kept to it)
_MAX_REQUEST_BYTES = max(settings.worker_producer_max_batch_size, settings.gateway_max_body_bytes + 65_536)
#: the largest record the worker sends (a dead letter, an emitted record, a state): what the producer sends and the
#: brokers store
_MAX_RECORD_BYTES = min(_MAX_REQUEST_BYTES, settings.kafka_max_message_bytes)
_data_dir: dict[str, Any] = {"datadir": settings.worker_data_dir} if settings.worker_data_dir else {}


class HookstreamApp(faust.App):
    """A Faust app whose consumer hands event-topic records to the actors a fetch at a time, and whose producer
    flushes the table writer's changelog batches before itself."""

    #: the consumer generation whose actors were stopped last (``_consumer_wait_empty``, ``_ours``)
    given_up_generation: int | None = None

    def _new_producer(self) -> FlushingProducer:
        producer = FlushingProducer(self.transport, loop=self.loop, beacon=self.beacon)
        producer.table_writer = table_writer
        return producer

    def _new_consumer(self) -> BatchingConsumer:
        transport = self.transport
        consumer = BatchingConsumer(
            transport,
            callback=self.topics.on_message,
            loop=transport.loop,
            on_partitions_revoked=self._on_partitions_revoked,
            on_partitions_assigned=self._on_partitions_assigned,
            beacon=self.beacon,
        )
        consumer.probe_options = client_options(settings)
        return consumer

    def _give_up_generation(self) -> None:
        """From the actors' cancellation on, what of this generation still runs is left behind (its handler swallowed
        the cancellation, or it waits for room in the changelog): nothing of it may be stored or acked any more,
        even before the next assignment gives the consumer a new generation (``_ours``)."""
        self.given_up_generation = self.consumer_generation_id

    async def _consumer_wait_empty(self, consumer: ConsumerT, logger: Any) -> None:
        """Faust waits, without a bound, for every record it handed out to be acked, at stop and at a rebalance.
        At stop, an event between retries outlasted a pod's grace period (the worker was killed, its RocksDB state
        rebuilt). At a rebalance, Kafka gives the partitions of a member that has not rejoined within the rebalance
        timeout to the others: an event running longer ran on (and stored its state, and emitted) while another
        worker had its partition and ran it too. (The embedded broker waits for such a member instead, and the whole
        group with it.) So the actors get ``HANDLER_TIMEOUT`` at stop, ``Settings.rebalance_grace`` at a rebalance
        (the same, at most half of ``WORKER_REBALANCE_TIMEOUT``); the rest are cancelled unacknowledged
        (uncommitted: the partition's next owner processes them), and Faust stops waiting for acks that cannot come
        any more."""
        grace, cancelled = revoke_grace(self.should_stop, membership_lost(consumer))
        unfinished = await actors.stop(grace, giving_up=self._give_up_generation)
        if unfinished:  # not to ``logger``: at a rebalance it is Faust's flight recorder, which keeps it unless stuck
            log.warning(
                "%d events unfinished %gs %s unacknowledged (uncommitted: their partition's next owner processes them)",
                unfinished,
                grace,
                cancelled,
            )
        batching = cast(BatchingConsumer, consumer)
        batching.forget_unfinished()
        # commits what finished; at a rebalance nothing of the revoked partitions (BatchingConsumer: no commit base),
        # which BatchingConsumer.on_partitions_revoked commits after this
        await super()._consumer_wait_empty(consumer, logger)
        if self.should_stop:
            # Faust's last commit is skipped when a periodic one is in flight (it waits for that one, and returns):
            # what finished after that one's snapshot stayed uncommitted, and the partition's next owner processed
            # it again (seen as duplicates after a worker left the group)
            await batching.maybe_wait_for_commit_to_finish()
            await batching.force_commit()


def revoke_grace(stopping: bool, lost: bool) -> tuple[float, str]:
    """Seconds the actors get to finish when the worker's partitions are revoked, and how the unfinished end.

    A worker the group already dropped (``lost``: it missed heartbeats for the session timeout, a long pause or a
    network cut) learns it only as it rejoins: its partitions may be another worker's already, so what it still
    stores would land after the new owner's, and the next recovery would take the older state. It gets none."""
    if stopping:
        return settings.handler_timeout, "after the stop began: stopped"
    if lost:
        return 0.0, "after the group had dropped this worker (no heartbeat within WORKER_SESSION_TIMEOUT): cancelled"
    return settings.rebalance_grace, "into a rebalance: cancelled"


def membership_lost(consumer: Any) -> bool:
    """True when aiokafka's coordinator has forgotten its generation: the group refused its heartbeat or its join
    as of an unknown member or a past generation (``reset_generation``), and the rebalance under way is its
    rejoin."""
    try:
        generation = consumer._thread._ensure_consumer()._coordinator.generation
    except Exception:  # no consumer thread or coordinator yet (a stop before the first join)
        return False
    return bool(generation == _UNKNOWN_GENERATION)


#: aiokafka's generation of a member that is not (or no longer) in the group (OffsetCommitRequest's default)
_UNKNOWN_GENERATION = -1


app = HookstreamApp(
    settings.worker_app_id,
    **faust_broker_options(settings),
    store=settings.state_store,
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=settings.topic_replication_factor,
    web_port=settings.worker_web_port,
    web_bind=settings.worker_web_bind,  # where the web server listens; web_host is only the name peers use
    **_web_host,
    **_data_dir,
    broker_rebalance_timeout=settings.worker_rebalance_timeout,
    broker_session_timeout=settings.worker_session_timeout,
    broker_heartbeat_interval=min(3.0, settings.worker_session_timeout / 3),
    # Large batches: aiokafka keeps one open batch per partition and makes a writer wait (asyncio.wait) while a
    # full one is sent; at Faust's default 16 KB (about ten states) the table writes waited on every few events
    # (make bench, cpu workload: 4,000 against 7,900 events/s with 1 MiB).
    producer_max_batch_size=settings.worker_producer_batch_bytes,
    producer_max_request_size=_MAX_REQUEST_BYTES,
    producer_acks=-1,
    key_serializer="raw",
    value_serializer="raw",
    consumer_auto_offset_reset="earliest",
    # At most this many records per fetch handed over (Faust's default: all it holds). The fetch size bounds
    # compressed bytes, and lz4 batches of small events decompress ~9x (bench/README.md): unbounded, a worker
    # catching up on a million small events peaked at 1.3 GB RSS; bounded, 223 MiB, at the same rate.
    broker_max_poll_records=5_000,
    autodiscover=False,
    Router=ForwardingRouter,  # GET /objects/<id> forwarded within a deadline, one hop, a 503 when the owner is away
)

#: RocksDB keeps one database per partition, each with Faust's defaults of up to 3 x 64 MiB write buffers and a
#: 2 GiB block cache: 1.4 GiB of RSS after a million objects on 8 partitions (make bench). Objects are read back
#: rarely (an object's next event), so small buffers and caches lose little; per partition at most 2 x 8 MiB +
#: 16 MiB.
ROCKSDB_OPTIONS = {
    "write_buffer_size": 8 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "block_cache_size": 16 * 1024 * 1024,
    "block_cache_compressed_size": 0,
}

# Keys are the event keys' bytes (the object id) and values msgspec-encoded ObjectState: raw both ways, so the
# table partitions exactly like the topics and nothing is serialised twice.
objects = app.Table(
    "objects",
    key_type=bytes,
    value_type=bytes,
    partitions=settings.topic_partitions,
    options=ROCKSDB_OPTIONS,  # used by the rocksdb:// store only
    extra_topic_configs=topic_configs(settings),  # its changelog's, as every topic hookstream creates
)

event_topics = sorted(settings.topic_prefix + object_type for object_type in registry.object_types)
source = app.topic(*event_topics, key_type=bytes, value_type=bytes, partitions=settings.topic_partitions)


async def _send(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
    await app.producer.send_and_wait(topic, key, value, None, None, headers)


def _ours(message: Any) -> bool:
    """Whether ``message`` may still be stored and acked here: of the consumer's generation, and not of one whose
    actors were stopped (a rebalance or the stop began: what runs on is left behind, its handler having swallowed
    the cancellation)."""
    generation = message.generation_id
    return generation == app.consumer_generation_id and generation != app.given_up_generation


table_writer = TableWriter(app, objects, max_record_bytes=_MAX_RECORD_BYTES - 4096)
processor = EventProcessor(
    registry,
    table_writer,
    _send,
    settings.dlq_topic,
    RetryPolicy(
        settings.handler_max_attempts,
        settings.handler_retry_backoff,
        settings.handler_retry_max_backoff,
        settings.handler_timeout,
    ),
    metrics,
    settings.gateway_max_body_bytes,  # the gateway publishes nothing larger
    _MAX_RECORD_BYTES,  # for a dead letter or a record a handler emits
    settings.topic_prefix,
    ours=_ours,
)


class _Current:
    """What Faust's table writes read from the current-event context: the record (for its partition)."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, message: Message) -> None:
        self.message = message


async def _finish(message: Message) -> None:
    """Process one record inside its actor, then ack it: commits stop at the first unfinished record
    (``BatchingConsumer._new_offset``)."""
    if message.generation_id != app.consumer_generation_id or not app.flow_control.is_active():
        # Fetched before a rebalance: not processed and not acked (Faust seeks back to the committed offset and
        # fetches it again), but forgotten, or the rebalance would wait for its ack forever.
        cast(BatchingConsumer, app.consumer).forget(message)
        return
    current = _Current(message)
    _current_event.set(weakref.ref(current))  # type: ignore[arg-type]
    try:
        await processor.process(message)
    except NoLongerOurs as exc:  # an actor left behind by a rebalance: the record's new owner processes it
        log.warning("%s: nothing emitted or stored here, not acknowledged", exc)
        return
    except StateNotStored as exc:
        # Not acked: the partition's commits stop short of it. Nothing more of its object may run here: a later event
        # stored on top of the state that was not would make this one stale when it comes again, and its effect lost.
        # The worker stops, rebuilds its state from the changelog (an unclean stop, streams/worker.py) and processes
        # the record again. (Logged by the actor pool.)
        actors.halt(message.key)
        if app.crash_reason is None:
            await app.crash(exc)  # marks the app crashed (no wait): the worker stops, exit code 1
        raise
    except Exception:  # a bug of ours past the processor's own net: acked still, or the partition's commits would
        _ack(message)  # stop at this record for good (the error is logged by the actor pool)
        raise
    # Not acked on CancelledError (the worker stops: uncommitted, processed again on restart) nor on GeneratorExit
    # (an actor cancelled before it ran leaves its first record to the collector, which closes it).
    _ack(message)


def _ack(message: Message) -> None:
    """Ack a finished record, unless a rebalance came between (an actor left behind because its handler swallowed
    the cancellation): its partition may be this worker's again, whose new generation runs the record afresh, and a
    late ack would count that run finished before it is."""
    if _ours(message):
        app.consumer.ack(message)


#: An actor per object id: the agent submits to it, the app stops it (``HookstreamApp._consumer_wait_empty``).
actors: ActorPool[Message] = ActorPool(_finish, settings.worker_max_inflight)


@app.agent(source)  # type: ignore[arg-type]  # Faust types agents over StreamT, which lacks noack()
async def process_events(stream: faust.Stream[Any]) -> None:
    """Run the actors. The agent also declares the event topics to Faust (subscription, assignment,
    co-partitioning with the table); their records reach the actors through the batching consumer."""
    metrics.inflight.set_function(lambda: actors.inflight)
    metrics.active_actors.set_function(lambda: actors.active_actors)

    async def submit(batch: list[Message]) -> None:
        for message in batch:
            # waits while the in-flight bound is reached, or (through TableWriter.put) while the changelog
            # partition has two batches full and not with the producer: memory stays bounded, state never runs
            # far ahead of its changelog
            await actors.submit(message.key, message)

    consumer = app.consumer
    assert isinstance(consumer, BatchingConsumer)
    consumer.batch_topics = frozenset(event_topics)
    consumer.batch_sink = submit
    consumer.skip_sink = lambda topic, count: metrics.records_skipped.labels(topic).inc(count)
    for topic in event_topics:  # from zero, so that increase() sees the first
        metrics.records_skipped.labels(topic)
    for event_type, object_type in registry.handled:  # likewise a handled type's first dead letter after a start
        metrics.processed_counter(settings.topic_prefix + object_type, event_type, Outcome.OK)
    try:
        async for event in stream.noack().events():  # only records that did not take the batch path
            await actors.submit(event.message.key, event.message)
    finally:
        await actors.stop(settings.handler_timeout)


lag = LagReporter(app, metrics, set(event_topics))
dead_letters = DeadLetterBacklog(app, metrics, settings.dlq_topic, settings.replay_group, client_options(settings))


@app.timer(interval=settings.worker_lag_interval)
async def refresh_lag() -> None:
    await lag.refresh()


@app.task
async def watch_event_loop() -> None:
    await watch_loop(metrics.loop_lag)


@app.timer(interval=settings.worker_lag_interval * 6)  # a probe consumer each time: less often than the lag
async def count_dead_letters() -> None:
    await dead_letters.refresh()


@app.page("/objects/{object_id}")
class ObjectState(View):
    """The object's state as JSON, answered by the worker that owns its partition (others forward)."""

    @app.table_route(table=objects, match_info="object_id")  # type: ignore[arg-type]  # Faust types views without match_info arguments
    async def get(self, request: Request, object_id: str) -> Response:
        # unready, the router answered 503 (streams/routing.py): nothing here reads a half-recovered table
        stored = objects.get(object_id.encode())
        if stored is None:
            return self.json({"error": f"no object {object_id}"}, status=404)
        return self.bytes(stored, content_type="application/json")


@app.page("/healthz")
class Health(View):
    async def get(self, request: Request) -> Response:
        return self.json({"status": "ok"})


@app.page("/readyz")
class Ready(View):
    """Ready once the worker has its partitions and has recovered their table state."""

    async def get(self, request: Request) -> Response:
        if worker_ready(app):
            return self.json({"ready": True})
        return self.json({"ready": False, "reason": "joining the group or recovering tables"}, status=503)


@app.page("/metrics")
class Metrics(View):
    async def get(self, request: Request) -> Response:
        # aiohttp refuses a charset in content_type; the exposition format is UTF-8 by definition
        return self.bytes(
            generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4"
        )

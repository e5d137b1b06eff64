"""Durable publishing: an event counts as received only once the broker has acknowledged it (acks=all).

One producer is shared by all requests, so concurrent requests fill the same large batches instead of paying a
round trip each. It is librdkafka's (``gateway/rdkafka.py``): measured against aiokafka's producer in the same
gateway, it carried more requests per second (bench/README.md), because its batching and network work run in
C threads beside the event loop. Topics are created with aiokafka's admin client, like the workers do.
While the broker cannot be reached, ``publish`` fails with BrokerUnavailable and the gateway answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from gateway.envelope import Record
from gateway.metrics import GatewayMetrics
from gateway.rdkafka import AsyncProducer, DeliveryFailed, TopicRefused, librdkafka_config
from ops.kafka import TopicCreationError, client_options, create_topics
from ops.settings import Settings

log = logging.getLogger(__name__)

#: Seconds before a producer that replaced one with a fatal error may itself be replaced, doubling up to the max.
_FIRST_REPLACEMENT_DELAY = 2.0
_MAX_REPLACEMENT_DELAY = 60.0


class BrokerUnavailable(Exception):
    """The broker did not acknowledge the record in time; the sender should retry later."""


class Publisher:
    """Owns the producer and the admin client: create topics on first use, publish, follow broker health."""

    def __init__(self, settings: Settings, metrics: GatewayMetrics, probe_interval: float = 2.0) -> None:
        self._settings = settings
        self._metrics = metrics
        self._probe_interval = probe_interval
        self._producer: AsyncProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._known_topics: set[str] = set()
        self._topic_lock = asyncio.Lock()
        self._healthy = False
        self._said_down = False  # the log said Kafka stopped answering, and not yet that it answers again
        self._task: asyncio.Task[None] | None = None
        # a fatal error that comes back with every new producer (a missing ACL) must not churn librdkafka instances
        self._replacement_delay = _FIRST_REPLACEMENT_DELAY
        self._next_replacement = 0.0

    @property
    def ready(self) -> bool:
        """True while the broker answered the last probe or publish, and the producer can still publish."""
        producer = self._producer
        return producer is not None and producer.fatal_error is None and self._admin is not None and self._healthy

    async def start(self) -> None:
        """Start connecting in the background; the gateway serves (with 503s) until the broker answers."""
        self._producer = AsyncProducer(librdkafka_config(self._settings), asyncio.get_running_loop())
        self._task = asyncio.create_task(self._maintain(), name="hookstream-publisher")

    async def stop(self) -> None:
        """Deliver what is queued, then close the clients."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._producer is not None:
            left = await self._producer.close(self._settings.gateway_publish_timeout)
            if left:
                log.warning("%d record(s) not delivered at shutdown: their senders got no 200", left)
            self._producer = None
        await self._close_admin()

    async def publish(self, record: Record) -> None:
        """Send ``record`` and wait for the broker's acknowledgement, or raise BrokerUnavailable (or RecordTooLarge:
        over ``KAFKA_MAX_MESSAGE_BYTES`` or the broker's own limit)."""
        producer = self._producer
        if producer is None or self._admin is None:
            raise BrokerUnavailable("not connected to the broker")
        started = time.perf_counter()
        try:
            if record.topic in self._known_topics:
                # librdkafka reports every record within message.timeout.ms (GATEWAY_PUBLISH_TIMEOUT): no
                # per-request timer needed on the event loop
                await producer.send(record.topic, record.value, record.key, record.headers)
            else:  # creating the topic and delivering share one deadline: a request waits GATEWAY_PUBLISH_TIMEOUT
                async with asyncio.timeout(self._settings.gateway_publish_timeout):
                    await self._ensure_topic(record.topic)
                    await producer.send(record.topic, record.value, record.key, record.headers)
        # the brokers answered: readiness stays (one topic's fault must not take every pod out of the Service)
        except TopicRefused as exc:
            self._known_topics.discard(record.topic)  # created again, or refused again, next time
            raise BrokerUnavailable(
                f"the broker refused topic {record.topic} ({exc}): does it exist, and may this user write to it?"
            ) from exc
        except TopicCreationError as exc:  # a topic policy, or a controller election: tried again at the next event
            raise BrokerUnavailable(str(exc)) from exc
        except (TimeoutError, KafkaError, DeliveryFailed, BufferError) as exc:
            self._healthy = False  # the probe says so in the log, once: a request's failure may be its own
            self._known_topics.clear()  # a restarted (memory) broker may have lost them
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if isinstance(exc, TimeoutError):
                why = f"not within GATEWAY_PUBLISH_TIMEOUT ({self._settings.gateway_publish_timeout:g} s)"
            raise BrokerUnavailable(f"broker did not acknowledge: {why}") from exc
        self._healthy = True
        self._metrics.publish_seconds.labels(record.topic).observe(time.perf_counter() - started)
        self._metrics.published.labels(record.topic, record.event_type).inc()

    async def _ensure_topic(self, topic: str) -> None:
        async with self._topic_lock:
            if topic in self._known_topics or self._admin is None:
                return
            await create_topics(self._admin, self._settings, [topic])
            self._known_topics.add(topic)

    async def _maintain(self) -> None:
        """Connect the admin client with capped backoff, then probe the broker so readiness follows its health."""
        backoff = 0.5
        while True:
            if self._admin is None:
                try:
                    await self._connect_admin()
                    backoff = 0.5
                    log.info("connected to Kafka at %s", self._settings.kafka_bootstrap_servers)
                except Exception as exc:
                    log.warning(
                        "cannot reach Kafka at %s (%s: %s); retrying in %.1fs",
                        self._settings.kafka_bootstrap_servers,
                        type(exc).__name__,
                        exc,
                        backoff,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
            try:
                if self._producer is not None and self._producer.fatal_error is not None:
                    await self._replace_producer()
                elif asyncio.get_running_loop().time() >= self._next_replacement:
                    self._replacement_delay = _FIRST_REPLACEMENT_DELAY  # the last one outlived its delay: it works
                await self._probe()
            except Exception:  # maintenance must go on: it is what brings readiness back
                log.exception("maintaining the Kafka clients failed; trying again in %gs", self._probe_interval)
            await asyncio.sleep(self._probe_interval)

    async def _connect_admin(self) -> None:
        timeout_ms = int(self._settings.gateway_publish_timeout * 1000)
        admin = AIOKafkaAdminClient(**client_options(self._settings), request_timeout_ms=timeout_ms)
        try:
            async with asyncio.timeout(self._settings.gateway_publish_timeout):
                await admin.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await admin.close()
            raise
        self._admin = admin

    async def _replace_producer(self) -> None:
        """A producer with a fatal error refuses every record for good: publish with a new one from now on (after
        a growing delay when the new ones fail too)."""
        now = asyncio.get_running_loop().time()
        if now < self._next_replacement:
            return
        self._next_replacement = now + self._replacement_delay
        self._replacement_delay = min(self._replacement_delay * 2, _MAX_REPLACEMENT_DELAY)
        failed = self._producer
        assert failed is not None
        self._producer = AsyncProducer(librdkafka_config(self._settings), asyncio.get_running_loop())
        log.warning("replaced the Kafka producer after its fatal error; requests until now were answered 503")
        left = await failed.close(self._settings.gateway_publish_timeout)
        if left:
            log.warning("%d record(s) of the failed producer not delivered: their senders got a 503", left)

    async def _probe(self) -> None:
        producer = self._producer
        if producer is None:
            return
        known = next(iter(self._known_topics), None)  # one it created (never auto-created: librdkafka_config)
        answered = await asyncio.to_thread(producer.cluster_answers, self._probe_interval + 1, known)
        # the log says when publishing stopped and when it resumed, once each, as the probes see it
        if not answered and not self._said_down:
            log.warning("Kafka stopped answering; publishing answers 503 until it does")
        elif answered and self._said_down:
            log.info("Kafka answers again: publishing resumed")
        self._said_down = not answered
        self._healthy = answered

    async def _close_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()

"""Durable publishing: an event counts as received only once the broker has acknowledged it (acks=all).

One long-lived aiokafka producer is shared by all requests, so concurrent requests fill the same large batches
instead of paying a round trip each. The producer connects (and reconnects after a broker outage) in the
background; while it cannot, ``publish`` fails fast with BrokerUnavailable and the gateway answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from gateway.envelope import Record
from gateway.metrics import GatewayMetrics
from ops.kafka import TopicCreationError, client_options, create_topics
from ops.settings import Settings

log = logging.getLogger(__name__)

#: Room for headers and framing on top of the largest body the gateway accepts.
_RECORD_OVERHEAD = 64 * 1024


class BrokerUnavailable(Exception):
    """The broker did not acknowledge the record in time; the sender should retry later."""


class Publisher:
    """Owns the producer: connect with backoff, create topics on first use, publish with a deadline."""

    def __init__(self, settings: Settings, metrics: GatewayMetrics, probe_interval: float = 2.0) -> None:
        self._settings = settings
        self._metrics = metrics
        self._probe_interval = probe_interval
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._known_topics: set[str] = set()
        self._topic_lock = asyncio.Lock()
        self._healthy = False
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """True while the producer is connected and the broker answered the last probe."""
        return self._producer is not None and self._healthy

    async def start(self) -> None:
        """Start connecting in the background; the gateway serves (with 503s) until the broker answers."""
        self._task = asyncio.create_task(self._maintain(), name="hookstream-publisher")

    async def stop(self) -> None:
        """Flush what is buffered, then close the clients."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close()

    async def publish(self, record: Record) -> None:
        """Send ``record`` and wait for the broker's acknowledgement, or raise BrokerUnavailable."""
        producer = self._producer
        if producer is None:
            raise BrokerUnavailable("not connected to the broker")
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._settings.gateway_publish_timeout):
                await self._ensure_topic(record.topic)
                delivery = await producer.send(record.topic, record.value, key=record.key, headers=record.headers)
                # shield: a deadline must not cancel the future aiokafka resolves when the batch completes
                await asyncio.shield(delivery)
        except (TimeoutError, KafkaError, TopicCreationError) as exc:
            self._healthy = False
            self._known_topics.clear()  # a restarted (memory) broker may have lost them
            raise BrokerUnavailable(f"broker did not acknowledge: {type(exc).__name__}") from exc
        self._healthy = True
        self._metrics.publish_seconds.labels(record.topic).observe(time.perf_counter() - started)
        self._metrics.published.labels(record.topic, record.event_type).inc()

    async def _ensure_topic(self, topic: str) -> None:
        if topic in self._known_topics:
            return
        async with self._topic_lock:
            if topic in self._known_topics or self._admin is None:
                return
            await create_topics(self._admin, self._settings, [topic])
            self._known_topics.add(topic)

    async def _maintain(self) -> None:
        """Connect with capped backoff, then probe the broker so readiness follows its health."""
        backoff = 0.5
        while True:
            if self._producer is None:
                try:
                    await self._connect()
                    backoff = 0.5
                    log.info("connected to Kafka at %s", self._settings.kafka_bootstrap_servers)
                except Exception as exc:
                    log.warning(
                        "cannot reach Kafka at %s (%s); retrying in %.1fs",
                        self._settings.kafka_bootstrap_servers,
                        _describe(exc),
                        backoff,
                    )
                    await self._close()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
            await asyncio.sleep(self._probe_interval)
            await self._probe()

    async def _connect(self) -> None:
        settings = self._settings
        options = client_options(settings)
        producer = AIOKafkaProducer(
            **options,
            acks="all",
            enable_idempotence=settings.kafka_enable_idempotence,
            linger_ms=settings.producer_linger_ms,
            max_batch_size=settings.producer_max_batch_size,
            max_request_size=max(settings.producer_max_batch_size, settings.gateway_max_body_bytes + _RECORD_OVERHEAD),
            request_timeout_ms=int(settings.gateway_publish_timeout * 1000),
        )
        admin = AIOKafkaAdminClient(**options, request_timeout_ms=int(settings.gateway_publish_timeout * 1000))
        try:
            async with asyncio.timeout(settings.gateway_publish_timeout):
                await producer.start()
                await admin.start()
        except BaseException:
            await _stop_quietly(producer, admin)
            raise
        self._producer, self._admin, self._healthy = producer, admin, True

    async def _probe(self) -> None:
        producer = self._producer
        if producer is None:
            return
        try:
            async with asyncio.timeout(self._probe_interval + 1):
                await producer.client.fetch_all_metadata()
            self._healthy = True
        except (TimeoutError, KafkaError) as exc:
            if self._healthy:
                log.warning("Kafka stopped answering (%s); publishing answers 503 until it does", _describe(exc))
            self._healthy = False

    async def _close(self) -> None:
        producer, admin = self._producer, self._admin
        self._producer, self._admin, self._healthy = None, None, False
        await _stop_quietly(producer, admin)


async def _stop_quietly(*clients: AIOKafkaProducer | AIOKafkaAdminClient | None) -> None:
    for client in clients:
        if client is None:
            continue
        try:
            if isinstance(client, AIOKafkaAdminClient):
                await client.close()
            else:
                await client.stop()
        except Exception as exc:  # closing must not mask the reason we are closing
            log.debug("error while closing a Kafka client: %s", _describe(exc))


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if "InitProducerId" in text or type(exc).__name__ == "UnknownError":
        text += " (brokers without idempotent producers, like the embedded one, need KAFKA_ENABLE_IDEMPOTENCE=false)"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

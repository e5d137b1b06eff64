"""librdkafka's producer (confluent-kafka) bridged to asyncio.

``produce`` is one C call on the event loop; batching, compression and the network happen in librdkafka's own
threads, off the event loop and outside the GIL. Delivery reports are collected by one poller thread and handed
to the loop in batches (one wake-up per poll, not per record). Measured here against aiokafka's producer: see
bench/README.md.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, cast

import confluent_kafka

from ops.settings import Settings

#: Room for headers and framing on top of the largest body the gateway accepts.
_RECORD_OVERHEAD = 64 * 1024


class DeliveryFailed(Exception):
    """The broker did not store the record (librdkafka's error says why)."""


def librdkafka_config(settings: Settings) -> dict[str, Any]:
    """librdkafka settings from the same variables as every other client (acks=all, murmur2 like Java)."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "security.protocol": settings.kafka_security_protocol.lower(),
        "acks": "all",
        "enable.idempotence": settings.kafka_enable_idempotence,
        "linger.ms": settings.producer_linger_ms,
        "batch.size": settings.producer_max_batch_size,
        # A batch goes out once it holds this many records, without waiting out linger.ms: under load the batches
        # fill at once and the wait only added latency, which on a fixed number of connections caps throughput
        # (bench/README.md: +40-50% requests/s at 64 connections). Bytes never fill a 1 MiB batch first.
        "batch.num.messages": settings.producer_batch_records,
        "message.max.bytes": max(settings.producer_max_batch_size, settings.gateway_max_body_bytes + _RECORD_OVERHEAD),
        "message.timeout.ms": int(settings.gateway_publish_timeout * 1000),
        "partitioner": "murmur2_random",  # Kafka's default partitioner: every client routes an id alike
        "socket.keepalive.enable": True,
        "log_level": 4,  # warnings and worse
    }
    if settings.kafka_security_protocol.startswith("SASL"):
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        config["sasl.username"] = settings.kafka_sasl_username or ""
        config["sasl.password"] = settings.kafka_sasl_password or ""
    if settings.kafka_ssl_cafile:
        config["ssl.ca.location"] = settings.kafka_ssl_cafile
    return config


class AsyncProducer:
    """One librdkafka producer for the process; ``send`` returns a future resolved by the delivery report."""

    def __init__(self, config: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._producer = confluent_kafka.Producer(config)
        self._running = True
        self._reports: list[tuple[asyncio.Future[None], Any]] = []
        self._poller = threading.Thread(target=self._poll, name="hookstream-delivery-reports", daemon=True)
        self._poller.start()

    def send(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[None]:
        """Queue one record; raises BufferError when librdkafka's queue is full (the broker is not keeping up)."""
        future: asyncio.Future[None] = self._loop.create_future()
        self._producer.produce(
            topic,
            value,
            key,
            headers=cast(Any, headers),
            on_delivery=lambda err, msg: self._reports.append((future, err)),
        )
        return future

    def _poll(self) -> None:
        """Serve delivery callbacks, then resolve their futures on the loop in one batch."""
        while self._running:
            self._producer.poll(0.05)
            self._hand_over()

    def _hand_over(self) -> None:
        if self._reports:
            reports, self._reports = self._reports, []
            self._loop.call_soon_threadsafe(_resolve, reports)

    async def close(self, flush_seconds: float = 10.0) -> int:
        """Deliver what is queued (up to ``flush_seconds``), stop the poller; return the records left undelivered."""
        remaining: int = await asyncio.to_thread(self._producer.flush, flush_seconds)
        self._running = False
        await asyncio.to_thread(self._poller.join, 2.0)
        self._hand_over()
        return remaining

    def cluster_answers(self, timeout: float) -> bool:
        """Blocking metadata round trip: True when a broker answered."""
        try:
            self._producer.list_topics(timeout=timeout)
            return True
        except confluent_kafka.KafkaException:
            return False


def _resolve(reports: list[tuple[asyncio.Future[None], Any]]) -> None:
    for future, error in reports:
        if future.done():  # the request gave up already (deadline); the record was stored anyway or not
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(DeliveryFailed(str(error)))

"""The gateway's ASGI application: verify, route, publish, answer.

A bare ASGI callable rather than a framework: the gateway has five routes and its hot path is one POST, so
every microsecond not spent on routing and request objects goes to throughput (see bench/README.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.envelope import EnvelopeError, to_record
from gateway.metrics import GatewayMetrics
from gateway.publisher import BrokerUnavailable, Publisher
from gateway.rdkafka import RecordTooLarge
from gateway.signature import SignatureError, SignatureVerifier
from ops.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

WEBHOOK_PATH = "/webhooks/stripe"
_JSON = b"application/json"

log = logging.getLogger(__name__)


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class Gateway:
    """ASGI app: ``POST /webhooks/stripe`` plus health, readiness and metrics endpoints."""

    def __init__(
        self,
        settings: Settings,
        metrics: GatewayMetrics | None = None,
        publisher: Publisher | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or GatewayMetrics()
        self.publisher = publisher or Publisher(settings, self.metrics)
        self.metrics.ready.set_function(lambda: self.publisher.ready)  # read at scrape time, like /readyz
        self._verifier = SignatureVerifier(settings.stripe_webhook_secrets, settings.stripe_webhook_tolerance)
        self._retry_later = [(b"retry-after", b"%d" % settings.gateway_retry_after)]
        self._routes: dict[str, Callable[[Scope, Receive, Send], Awaitable[None]]] = {
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/metrics": self._metrics,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if path == WEBHOOK_PATH:
            if method == "POST":
                await self._webhook(scope, receive, send)
            else:
                await self._error(send, 405, "method not allowed: use POST", [(b"allow", b"POST")])
            return
        route = self._routes.get(path)
        if route is None:
            await self._error(send, 404, "not found")
        elif method in ("GET", "HEAD"):
            await route(scope, receive, send)
        else:
            await self._error(send, 405, "method not allowed: use GET", [(b"allow", b"GET, HEAD")])

    async def _webhook(self, scope: Scope, receive: Receive, send: Send) -> None:
        signature: bytes | None = None
        declared_length: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"stripe-signature":
                signature = signature or value
            elif name == b"content-length":
                declared_length = value
        try:
            body = await _read_body(receive, declared_length, self.settings.gateway_max_body_bytes)
        except _BodyTooLarge:
            limit = self.settings.gateway_max_body_bytes
            await self._error(send, 413, f"body larger than {limit} bytes", [(b"connection", b"close")])
            return
        except ValueError:
            await self._error(send, 400, "invalid Content-Length header")
            return
        except _ClientGone:
            return
        try:
            self._verifier.verify(signature, body)
        except SignatureError as exc:
            self.metrics.signature_failures.labels(exc.reason.value).inc()
            await self._error(send, 400, str(exc))
            return
        try:
            record = to_record(body, self.settings.topic_prefix, time.time_ns() // 1_000_000)
        except EnvelopeError as exc:
            await self._error(send, 400, str(exc))
            return
        try:
            await self.publisher.publish(record)
        except BrokerUnavailable as exc:
            log.warning("event %s not acknowledged by Kafka (%s): answered 503", record.event_id, exc)
            await self._error(send, 503, "event not stored: broker unavailable, retry later", self._retry_later)
            return
        except RecordTooLarge as exc:
            size = len(record.value) + len(record.key) + sum(len(k) + len(v) for k, v in record.headers)
            log.error(
                "event %s not stored: its record (%d bytes) or its batch is over the size limit (%s); "
                "KAFKA_MAX_MESSAGE_BYTES is %d: when the record is well under it, the topic's max.message.bytes "
                "is lower. Raise both together",
                record.event_id,
                size,
                exc,
                self.settings.kafka_max_message_bytes,
            )
            await self._error(send, 413, "event too large for the broker's record size limit (KAFKA_MAX_MESSAGE_BYTES)")
            return
        except Exception:  # a bug of ours or of a Kafka client's: uvicorn's own 500 is not counted (nor logged as ours)
            log.exception("event %s not published, answered 503", record.event_id)
            await self._error(send, 503, "event not stored: internal error, retry later", self._retry_later)
            return
        await self._respond(send, 200, msgspec.json.encode({"received": True, "id": record.event_id}))

    # Probes and scrapes are not counted in hookstream_gateway_requests_total: it measures webhook traffic.
    async def _healthz(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_response(send, 200, b'{"status":"ok"}')

    async def _readyz(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.publisher.ready:
            await _send_response(send, 200, b'{"ready":true}')
        else:
            await _send_response(send, 503, b'{"ready":false,"reason":"not connected to Kafka"}')

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = generate_latest(self.metrics.registry)
        await _send_response(send, 200, body, CONTENT_TYPE_LATEST.encode())

    async def _error(
        self, send: Send, status: int, reason: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        # reasons are fixed texts (no body, signature or secret): for whoever debugs a sender
        log.debug("answered %d: %s", status, reason)
        await self._respond(send, status, msgspec.json.encode({"error": reason}), headers=headers)

    async def _respond(
        self,
        send: Send,
        status: int,
        body: bytes,
        content_type: bytes = _JSON,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.metrics.requests.labels(str(status)).inc()
        await _send_response(send, status, body, content_type, headers)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.publisher.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.publisher.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _send_response(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = _JSON,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    response_headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    if headers:
        response_headers.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive, declared_length: bytes | None, limit: int) -> bytes:
    """Read the whole body, refusing it as soon as it is known to exceed ``limit`` bytes."""
    if declared_length is not None and int(declared_length) > limit:
        raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)

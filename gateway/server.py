"""Serve the gateway with uvicorn (httptools parser, uvloop event loop): the fastest stack measured here."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import uvicorn

from gateway.app import Gateway
from gateway.metrics import GatewayMetrics
from gateway.protocol import guarded_protocol
from ops.settings import Settings

log = logging.getLogger(__name__)


def serve(settings: Settings) -> None:
    """Run the gateway until SIGINT/SIGTERM; in-flight requests finish before the producer is flushed."""
    if settings.using_dev_secret:
        log.warning(
            "STRIPE_WEBHOOK_SECRETS is not set: accepting the public local development secret. "
            "Never expose this gateway to the internet like this."
        )
    metrics = GatewayMetrics()
    uvicorn.Server(server_config(Gateway(settings, metrics), settings, metrics)).run()


def server_config(app: Callable[..., Any], settings: Settings, metrics: GatewayMetrics) -> uvicorn.Config:
    """uvicorn serving ``app`` as the gateway is served (also the benchmark's HTTP ceiling, with an app that does
    no work)."""
    return uvicorn.Config(
        app,
        host=settings.gateway_host,
        port=settings.gateway_port,
        loop="uvloop",
        # httptools with a deadline to receive each request and a cap on header bytes (gateway/protocol.py):
        # uvicorn has neither, so slow or endless clients would hold connections and memory indefinitely.
        http=guarded_protocol(settings, metrics),
        # No WebSocket upgrades: the gateway has no WebSocket route, and an installed websockets package would
        # otherwise hand such connections to a protocol without these limits.
        ws="none",
        # The gateway reads no client address, so uvicorn's X-Forwarded-For middleware would only cost time.
        proxy_headers=False,
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        # Idle keep-alive connections are closed after GATEWAY_KEEPALIVE_TIMEOUT by the protocol's deadline;
        # uvicorn's own timer, a second later, never comes first.
        timeout_keep_alive=int(settings.gateway_keepalive_timeout) + 1,
        # A request still arriving at SIGTERM may take GATEWAY_CLIENT_TIMEOUT to arrive, then GATEWAY_PUBLISH_TIMEOUT
        # to be acknowledged (librdkafka checks its timeouts once a second): cut short, uvicorn would answer 500
        # for a record the producer's close then stores anyway.
        timeout_graceful_shutdown=math.ceil(settings.gateway_client_timeout + settings.gateway_publish_timeout) + 2,
        # limit_concurrency is left unset on purpose: uvicorn does not refuse connections beyond it, it answers
        # 503 to every new request while that many connections are open, so slow clients holding connections
        # would turn into refusals of genuine deliveries. The deadline bounds how long a connection is held.
        # backlog stays at uvicorn's 2048: uvloop accepts as fast as connections arrive, and a held connection is
        # accepted already, so the listen queue plays no part against slow clients.
    )

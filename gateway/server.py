"""Serve the gateway with uvicorn (httptools parser, uvloop event loop): the fastest stack measured here."""

from __future__ import annotations

import logging

import uvicorn

from gateway.app import Gateway
from ops.settings import Settings

log = logging.getLogger(__name__)


def serve(settings: Settings) -> None:
    """Run the gateway until SIGINT/SIGTERM; in-flight requests finish before the producer is flushed."""
    if settings.using_dev_secret:
        log.warning(
            "STRIPE_WEBHOOK_SECRETS is not set: accepting the public local development secret. "
            "Never expose this gateway to the internet like this."
        )
    config = uvicorn.Config(
        Gateway(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=int(settings.gateway_publish_timeout) + 5,
    )
    uvicorn.Server(config).run()

"""Baseline: the naive gateway, as written from the Stripe and aiokafka tutorials.

Stock uvicorn + httptools + uvloop (the gateway's stack without its protocol subclass), raw ASGI,
``stripe.Webhook.construct_event`` to verify and parse, then one ``await producer.send_and_wait(...)`` per
request on one shared aiokafka producer (acks=all, the gateway's linger and batch size; no idempotence, which the
embedded broker lacks). Topic and key as hookstream routes them: ``<prefix><data.object.object>``, key
``data.object.id``.

    python -m bench.naive_gateway --port N --bootstrap HOST:PORT --secret whsec_... --prefix bench.naive.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from typing import Any

import stripe
import uvicorn
from aiokafka import AIOKafkaProducer

Scope = dict[str, Any]
Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]


class NaiveGateway:
    """A raw ASGI webhook endpoint: verify with stripe-python, publish, await the acknowledgement, answer."""

    def __init__(self, bootstrap: str, secret: str, prefix: str) -> None:
        self.bootstrap, self.secret, self.prefix = bootstrap, secret, prefix
        self.producer: AIOKafkaProducer | None = None

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.producer = AIOKafkaProducer(
                        bootstrap_servers=self.bootstrap,
                        acks="all",
                        linger_ms=2,
                        max_batch_size=1 << 20,
                        compression_type="lz4",  # the gateway's default PRODUCER_COMPRESSION
                        enable_idempotence=False,
                    )
                    await self.producer.start()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self.producer is not None:
                        await self.producer.stop()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["method"] != "POST":
            await _answer(send, 200, {"ok": True})
            return
        headers = dict(scope["headers"])
        try:
            event = stripe.Webhook.construct_event(body, headers.get(b"stripe-signature", b"").decode(), self.secret)
        except (ValueError, stripe.SignatureVerificationError) as exc:
            await _answer(send, 400, {"error": str(exc)})
            return
        obj = event.data.object
        key = obj["id"] if "id" in obj else event.id
        assert self.producer is not None
        await self.producer.send_and_wait(self.prefix + obj.object, body, key=key.encode())
        await _answer(send, 200, {"received": True, "id": event["id"]})


async def _answer(send: Send, status: int, payload: dict[str, Any]) -> None:
    data = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def main() -> None:
    """Serve the naive gateway on ``--port`` in this process."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--prefix", required=True)
    args = parser.parse_args()
    uvicorn.run(
        NaiveGateway(args.bootstrap, args.secret, args.prefix),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
    )


if __name__ == "__main__":
    main()

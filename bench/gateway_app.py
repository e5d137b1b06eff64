"""Reference: what the gateway's own ASGI app costs per request, in process (no HTTP server, no Kafka: a publisher
that returns at once), against an ASGI app that does nothing, and its parts timed alone. This is the work the
gateway adds to the HTTP ceiling's on its main thread, minus the produce call and its acknowledgement.

    PYTHONPATH=. .venv/bin/python -m bench.gateway_app [--requests 50000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hmac
import time
import timeit
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from bench.common import SECRET, gateway_body
from gateway.app import WEBHOOK_PATH, Gateway
from gateway.envelope import Record, _decoder, to_record
from gateway.metrics import GatewayMetrics
from gateway.publisher import Publisher
from gateway.signature import SignatureVerifier, sign
from ops.settings import Settings

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]  # an ASGI app


class _Acknowledged(Publisher):
    """Every record acknowledged at once."""

    async def publish(self, record: Record) -> None:
        return None


async def _nothing(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    settings = Settings.from_env({"STRIPE_WEBHOOK_SECRETS": SECRET})
    metrics = GatewayMetrics()
    gateway = Gateway(settings, metrics, _Acknowledged(settings, metrics))
    body = gateway_body()
    signature = sign(body, SECRET).encode()
    scope = {
        "type": "http",
        "method": "POST",
        "path": WEBHOOK_PATH,
        "headers": [(b"stripe-signature", signature), (b"content-length", b"%d" % len(body))],
    }
    message = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    async def send(sent: dict[str, Any]) -> None:
        return None

    async def per_request(app: App) -> float:
        started = time.perf_counter()
        for _ in range(args.requests):
            await app(scope, receive, send)
        return (time.perf_counter() - started) / args.requests * 1e6

    async def rounds() -> None:
        for _ in range(args.rounds):
            print(
                f"app {await per_request(gateway):.2f} µs/request, a no-op ASGI app {await per_request(_nothing):.2f}"
            )

    print(f"body {len(body)} bytes, {args.requests} requests per round (uvloop)")
    uvloop.run(rounds())
    verifier = SignatureVerifier(settings.stripe_webhook_secrets, settings.stripe_webhook_tolerance)
    key = SECRET.encode()
    parts: dict[str, Callable[[], object]] = {
        "SignatureVerifier.verify": lambda: verifier.verify(signature, body),
        "  hmac.digest of the body": lambda: hmac.digest(key, body, "sha256"),
        "to_record": lambda: to_record(body, "stripe.", 0),
        "  envelope decode (msgspec)": lambda: _decoder.decode(body),
    }
    for name, call in parts.items():
        print(f"{name:<30}{timeit.timeit(call, number=args.requests) / args.requests * 1e6:6.2f} µs")


if __name__ == "__main__":
    main()

"""``hookstream trigger``: send one realistic, signed Stripe event to a gateway, as Stripe would."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from gateway.signature import sign
from ops.fixtures import build_event, encode


class TriggerResult:
    def __init__(self, status: int, body: str, event_id: str, object_id: str | None) -> None:
        self.status, self.body, self.event_id, self.object_id = status, body, event_id, object_id


def trigger(
    url: str, secret: str, event_type: str, object_id: str | None = None, age: int = 0, timeout: float = 30.0
) -> TriggerResult:
    """Build, sign and POST an event that happened ``age`` seconds ago (older than its object's state, it is
    stale); return the gateway's answer (any status, never raises on HTTP errors)."""
    event = build_event(event_type, object_id=object_id, created=int(time.time()) - age)
    body = encode(event)
    object_id = event["data"]["object"].get("id")  # None for an object Stripe sends without one
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": sign(body, secret),
            "User-Agent": "hookstream-trigger",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return TriggerResult(response.status, response.read().decode(), event["id"], object_id)
    except urllib.error.HTTPError as exc:
        return TriggerResult(exc.code, exc.read().decode(errors="replace"), event["id"], object_id)

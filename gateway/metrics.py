"""The gateway's Prometheus metrics (names and labels are part of DESIGN.md's contract)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

from ops.metrics import Children

_PUBLISH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GatewayMetrics:
    """One registry per gateway, so several gateways (tests) can live in one process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        ProcessCollector(registry=self.registry)  # CPU and memory of the gateway process
        self.requests = Counter(
            "hookstream_gateway_requests",
            "HTTP requests answered by the gateway, by status code.",
            ["status"],
            registry=self.registry,
        )
        self.signature_failures = Counter(
            "hookstream_gateway_signature_failures",
            "Webhook deliveries refused because of their Stripe-Signature, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.publish_seconds = Histogram(
            "hookstream_gateway_publish_seconds",
            "Time from handing an event to the producer until the broker acknowledged it.",
            ["topic"],
            buckets=_PUBLISH_BUCKETS,
            registry=self.registry,
        )
        self.published = Counter(
            "hookstream_events_published",
            "Events the broker acknowledged, by topic and Stripe event type.",
            ["topic", "event_type"],
            registry=self.registry,
        )
        self.requests_for = Children(self.requests)
        self.publish_seconds_for = Children(self.publish_seconds)
        self.published_for = Children(self.published)

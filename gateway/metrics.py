"""The gateway's Prometheus metrics (names and labels are part of DESIGN.md's contract)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector

from ops.metrics import LoopCounter, LoopHistogram

_PUBLISH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GatewayMetrics:
    """One registry per gateway, so several gateways (tests) can live in one process. Every metric is written
    from the event loop only (ops/metrics.py); ``ready`` is read when scraped (the Gateway sets its function)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        ProcessCollector(registry=self.registry)  # CPU and memory of the gateway process
        self.requests = LoopCounter(
            "hookstream_gateway_requests",
            "HTTP requests answered by the gateway, by status code.",
            ["status"],
            self.registry,
        )
        self.signature_failures = LoopCounter(
            "hookstream_gateway_signature_failures",
            "Webhook deliveries refused because of their Stripe-Signature, by reason.",
            ["reason"],
            self.registry,
        )
        self.publish_seconds = LoopHistogram(
            "hookstream_gateway_publish_seconds",
            "Time from handing an event to the producer until the broker acknowledged it.",
            ["topic"],
            _PUBLISH_BUCKETS,
            self.registry,
        )
        self.published = LoopCounter(
            "hookstream_events_published",
            "Events the broker acknowledged, by topic and Stripe event type.",
            ["topic", "event_type"],
            self.registry,
        )
        # Not in DESIGN.md's table (yet): a Kafka outage makes /readyz fail, so Kubernetes stops routing webhooks
        # to the gateway and its counters stop moving; this gauge is what the alerts see of it.
        self.ready = Gauge(
            "hookstream_gateway_ready",
            "1 while the gateway can publish to Kafka (what /readyz answers), else 0.",
            registry=self.registry,
        )

"""The worker's Prometheus metrics (names and labels are part of DESIGN.md's contract)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector

from ops.metrics import LoopCounter, LoopHistogram
from streams.state import Outcome

#: Up to past HANDLER_TIMEOUT's default (30 s): attempts that time out are observed too, and a quantile in the +Inf
#: bucket reads as the highest bound (the dashboard showed 10 s for handlers hanging to their 30 s timeout)
_HANDLER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_E2E_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        ProcessCollector(registry=self.registry)
        # the per-event metrics are the loop's own (ops/metrics.py): no lock per increment
        self.processed = LoopCounter(
            "hookstream_events_processed",
            "Events finished by the workers, by outcome (ok, duplicate, stale, unhandled, retried, dead_lettered).",
            ["topic", "event_type", "outcome"],
            self.registry,
        )
        self.handler_seconds = LoopHistogram(
            "hookstream_handler_seconds",
            "Time spent in a handler, per attempt.",
            ["event_type"],
            _HANDLER_BUCKETS,
            self.registry,
        )
        self.end_to_end_seconds = LoopHistogram(
            "hookstream_end_to_end_seconds",
            "Time from the gateway receiving an event (received-at; a replayed event: replayed-at) until a worker "
            "finished it.",
            ["topic"],
            _E2E_BUCKETS,
            self.registry,
        )
        self.consumer_lag = Gauge(
            "hookstream_consumer_lag",
            "Records not yet committed: log end offset minus committed offset.",
            ["topic", "partition"],
            registry=self.registry,
        )
        # Not in DESIGN.md's table (yet): lag alone cannot tell a held partition (one event that does not finish,
        # its commit still) from a busy one (its commit moving); this, over time, can.
        self.committed_offset = Gauge(
            "hookstream_committed_offset",
            "The consumer group's committed offset (the log start where none yet): Faust commits only up to the "
            "first unfinished event.",
            ["topic", "partition"],
            registry=self.registry,
        )
        # Not in DESIGN.md's table (yet): lag cannot show records that expired before they were read
        self.records_skipped = Counter(
            "hookstream_records_skipped",
            "Event records gone from Kafka before a worker read them (expired by the topic's retention, or deleted): "
            "acknowledged to Stripe, never processed.",
            ["topic"],
            registry=self.registry,
        )
        self.inflight = Gauge(
            "hookstream_inflight_events", "Events taken from Kafka and not yet finished.", registry=self.registry
        )
        # Not in DESIGN.md's table (yet): the dead-letter alert of the hour ends by itself, the dead letters do not.
        self.dead_letters_pending = Gauge(
            "hookstream_dead_letters_pending",
            "Dead letters not yet replayed or discarded (hookstream replay); NaN until first measured.",
            registry=self.registry,
        )
        self.dead_letters_pending.set(float("nan"))
        self.loop_lag = Gauge(
            "hookstream_event_loop_lag_seconds",
            "How late the event loop ran a 0.25 s timer, the worst over the last minute: a blocking handler stalls "
            "every object.",
            registry=self.registry,
        )
        self._processed_children: dict[tuple[str, str], dict[Outcome, Any]] = {}
        self.active_actors = Gauge(
            "hookstream_active_actors", "Objects with events queued or running.", registry=self.registry
        )

    def processed_counter(self, topic: str, event_type: str, outcome: Outcome) -> Any:
        """The counter child for one outcome; every outcome of a (topic, event type) starts at zero together,
        so ``increase()`` sees the first dead letter of a type (a series born at 1 would hide it)."""
        key = (topic, event_type)
        children = self._processed_children.get(key)
        if children is None:
            children = {o: self.processed.labels(topic, event_type, o.value) for o in Outcome}
            self._processed_children[key] = children
        return children[outcome]

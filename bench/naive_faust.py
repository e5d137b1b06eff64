"""Baseline: the naive Faust agent, as written from Faust's tutorial.

A ``faust.Record`` parsed from each event's JSON, one agent taking one event at a time, one table write per
event (the object's status, amount and last event). It gets what hookstream's worker gets in the benchmark:
1 MiB producer batches (the default of WORKER_PRODUCER_MAX_BATCH_SIZE), the embedded broker's short rebalance
and session timeouts (ops/dev.py). It also serves
``/readyz`` (assigned and recovered, as hookstream's worker) and ``/bench/count`` (events applied, table size),
which is how the benchmark proves that every event was applied.

    BENCH_BOOTSTRAP=HOST:PORT BENCH_TOPIC=T BENCH_APP_ID=A BENCH_DATADIR=D python -m bench.naive_faust worker \
        --web-port N --web-host 127.0.0.1 -l warn
"""

from __future__ import annotations

import os
from typing import Any, cast

import faust
from faust.web import Request, Response, View

BOOTSTRAP = os.environ.get("BENCH_BOOTSTRAP", "127.0.0.1:9092")
PARTITIONS = int(os.environ.get("BENCH_PARTITIONS", "8"))

app = faust.App(
    os.environ.get("BENCH_APP_ID", "naive-faust"),
    broker=f"kafka://{BOOTSTRAP}",
    store="memory://",
    datadir=os.environ.get("BENCH_DATADIR", "/tmp/naive-faust-data"),
    topic_partitions=PARTITIONS,
    producer_max_batch_size=int(os.environ.get("BENCH_PRODUCER_MAX_BATCH_SIZE", str(1 << 20))),
    broker_rebalance_timeout=3.0,
    broker_session_timeout=6.0,
    broker_heartbeat_interval=2.0,
    consumer_auto_offset_reset="earliest",
    autodiscover=False,
)


class StripeEvent(faust.Record, serializer="json"):
    """A Stripe event, as the tutorial models a topic's value."""

    id: str
    type: str
    created: int
    data: dict[str, Any]


events_topic = app.topic(
    os.environ.get("BENCH_TOPIC", "stripe.charge"), key_type=bytes, value_type=StripeEvent, partitions=PARTITIONS
)
objects = app.Table("objects", default=None, partitions=PARTITIONS)
applied = 0


@app.agent(events_topic)  # type: ignore[arg-type]  # Faust types agents over StreamT
async def apply_events(stream: faust.Stream[StripeEvent]) -> None:
    """One event at a time: write the object's new state to the table."""
    global applied
    async for event in stream:
        obj = event.data["object"]
        objects[obj["id"]] = {
            "status": obj.get("status"),
            "amount": obj.get("amount"),
            "last_event_id": event.id,
            "last_event_type": event.type,
            "last_event_created": event.created,
        }
        applied += 1


@app.page("/readyz")
class Ready(View):
    """200 once partitions are assigned and the table recovered."""

    async def get(self, request: Request) -> Response:
        recovered = cast(Any, app.tables).recovery.completed.is_set()
        if recovered and not app.rebalancing and not app.in_recovery:
            return self.json({"ready": True})
        return self.json({"ready": False}, status=503)


@app.page("/bench/count")
class Count(View):
    """Events applied and objects in the table."""

    async def get(self, request: Request) -> Response:
        return self.json({"applied": applied, "objects": len(objects)})


if __name__ == "__main__":
    app.main()

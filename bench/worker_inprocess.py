"""Reference: what the worker's processor and actor pool cost per event, in process (no Kafka: a dict for the table,
a send that returns at once), in CPU time, with the worker's GC settings. The sixteenth round (bench/README.md)
compared commits with it, alternating runs.

    PYTHONPATH=. .venv/bin/python -m bench.worker_inprocess [--wait] [--events 50000] [--ids 1000] [--rounds 3]

``--wait``: the handler awaits 5 ms (the I/O-bound workload's), else it returns at once (the CPU-bound one's).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

import uvloop

from streams.actors import ActorPool
from streams.events import StripeEvent
from streams.registry import Context, HandlerRegistry
from streams.worker import WORKER_GC_THRESHOLDS
from tests.support import ConsumedRecord, DictStore, processor, recording_send


async def _cpu_per_event(handlers: HandlerRegistry, records: list[ConsumedRecord], rounds: int) -> float:
    """The best of ``rounds`` runs: CPU seconds per event, from the first submit until every event is finished."""
    best = float("inf")
    for _ in range(rounds):
        proc = processor(handlers, DictStore(), recording_send([]), timeout=30)

        async def finish(record: ConsumedRecord, proc: object = proc) -> None:
            await proc.process(record)  # type: ignore[attr-defined]

        pool: ActorPool[ConsumedRecord] = ActorPool(finish, max_inflight=1000)
        started = time.process_time()
        for record in records:
            await pool.submit(record.key, record)
        await pool.drain()
        best = min(best, (time.process_time() - started) / len(records))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wait", action="store_true", help="the handler awaits 5 ms")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--ids", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    handlers = HandlerRegistry()

    @handlers.on("charge.updated")
    async def handle(event: StripeEvent, ctx: Context) -> None:
        if args.wait:
            await asyncio.sleep(0.005)
        ctx.fields["amount"] = event.object.get("amount")

    records = [
        ConsumedRecord.of_event("charge.updated", f"ch_{i % args.ids}", offset=i, created=1_700_000_000 + i)
        for i in range(args.events)
    ]
    gc.freeze()
    gc.set_threshold(*WORKER_GC_THRESHOLDS)
    seconds = uvloop.run(_cpu_per_event(handlers, records, args.rounds))
    print(f"{'waits 5 ms' if args.wait else 'does not wait'}: {seconds * 1e6:.1f} us of CPU per event")


if __name__ == "__main__":
    main()

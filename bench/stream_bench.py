"""Stream workloads: hookstream's worker against the naive Faust agent, the raw consume loop and the
sequential-per-partition consumer, over the same pre-published records on the same broker.

A worker is timed from its readiness (``GET /readyz`` answers 200: partitions assigned, tables recovered) to the
moment its own metrics say every event is finished (``hookstream_events_processed_total``, every outcome but
``retried``), polled; then its state is checked. Baselines are timed the same way from their own readiness.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

from bench.common import (
    PYTHON,
    Child,
    charge_records,
    child,
    cpu_seconds,
    finished,
    processed,
    publish,
    rss_mib,
    run_json_child,
)
from ops.dev import EMBEDDED_BROKER_ENV
from ops.process import free_port

POLL = 0.1


@dataclass
class Sizes:
    """How many events each stream workload uses."""

    cpu_events: int
    cpu_objects: int
    io_events: int
    io_objects: int
    memory_objects: int
    idle_seconds: float


@contextlib.contextmanager
def hookstream_worker(bootstrap: str, prefix: str, handlers: str, **env: str) -> Iterator[Child]:
    """Run ``hookstream worker`` on the embedded broker with bench handlers, a fresh app id and data dir."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="hookstream-bench-") as datadir:
        environ = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            **EMBEDDED_BROKER_ENV,
            "HOOKSTREAM_APP_ID": f"bench-{uuid.uuid4().hex[:8]}",
            "TOPIC_PREFIX": prefix,
            "HOOKSTREAM_HANDLERS": handlers,
            "WORKER_WEB_PORT": str(port),
            "WORKER_WEB_HOST": "127.0.0.1",
            "WORKER_DATA_DIR": datadir,
            "LOG_LEVEL": "WARNING",
            **env,
        }
        with child("hookstream worker", [PYTHON, "-m", "ops.cli", "worker"], environ, port) as proc:
            yield proc


@contextlib.contextmanager
def naive_faust_worker(bootstrap: str, topic: str) -> Iterator[Child]:
    """Run the naive Faust baseline as its own worker process."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="naive-faust-") as datadir:
        environ = {
            "BENCH_BOOTSTRAP": bootstrap,
            "BENCH_TOPIC": topic,
            "BENCH_APP_ID": f"naive-{uuid.uuid4().hex[:8]}",
            "BENCH_DATADIR": datadir,
        }
        command = [
            *(PYTHON, "-m", "bench.naive_faust", "worker"),
            *("--web-port", str(port), "--web-host", "127.0.0.1", "-l", "warn"),
        ]
        with child("naive faust", command, environ, port) as proc:
            yield proc


def time_until(proc: Child, count: Any, expected: int, timeout: float) -> dict[str, Any]:
    """Time a worker from the start of its work until ``count(proc) >= expected``.

    The start is the first poll that sees it ready (``/readyz`` 200) or already working (count above zero: a
    worker may start consuming a moment before its readiness check turns green); events already done then are
    left out of the rate. The end is interpolated between the last two polls. Also CPU seconds over the window.
    """
    deadline = time.monotonic() + 120
    while True:
        proc.check_alive()
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            done = count(proc)
            if done > 0 or proc.get("/readyz", timeout=2)[0] == 200:
                break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.name} never became ready:\n{proc.output()}")
        time.sleep(0.05)
    start, cpu0, at_start = time.monotonic(), cpu_seconds(proc.pid), done
    previous = (start, done)
    while done < expected:
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{proc.name}: {done} of {expected} events after {timeout:.0f}s:\n{proc.output()}")
        proc.check_alive()
        time.sleep(POLL)
        now, done_now = time.monotonic(), count(proc)
        if done_now < expected:
            previous = (now, done_now)
        done = done_now
    cpu = cpu_seconds(proc.pid) - cpu0
    last_t, last_done = previous
    end = last_t + (now - last_t) * (expected - last_done) / max(done - last_done, 1)
    elapsed = end - start
    return {
        "events": expected,
        "done_at_start": at_start,
        "elapsed_s": round(elapsed, 3),
        "events_per_s": (expected - at_start) / elapsed,
        "cpu_s": round(cpu, 2),
        "rss_mib": round(rss_mib(proc.pid), 1),
    }


def hookstream_count(proc: Child) -> float:
    """Events the worker is finished with."""
    return finished(processed(proc))


def faust_count(proc: Child) -> float:
    """Events the naive Faust agent applied."""
    status, body = proc.get("/bench/count")
    return float(msgspec.json.decode(body)["applied"]) if status == 200 else 0.0


def cpu_bound(bootstrap: str, prefix: str, sizes: Sizes) -> dict[str, Any]:
    """CPU-bound: hookstream worker vs naive Faust vs raw consume over the same charge events."""
    prefix = prefix + "cpu."
    topic = prefix + "charge"
    n, objects = sizes.cpu_events, sizes.cpu_objects
    start = time.monotonic()
    publish(bootstrap, charge_records(prefix, n, objects, id_tag="chcpu"))
    print(f"  stream cpu: published {n} events over {objects} ids in {time.monotonic() - start:.1f}s", flush=True)
    timeout = max(120.0, n / 200)
    results: dict[str, Any] = {"events": n, "objects": objects}
    with hookstream_worker(bootstrap, prefix, "bench.handlers_cpu") as worker:
        results["hookstream"] = time_until(worker, hookstream_count, n, timeout)
        outcomes = processed(worker)
        results["hookstream"]["outcomes"] = outcomes
        results["hookstream"]["state_check"] = check_cpu_state(worker, objects, n)
    print(f"  stream cpu: hookstream  {results['hookstream']['events_per_s']:>9.0f} events/s", flush=True)
    with naive_faust_worker(bootstrap, topic) as faust_proc:
        results["naive_faust"] = time_until(faust_proc, faust_count, n, max(300.0, n / 200))
        results["naive_faust"]["count_page"] = msgspec.json.decode(faust_proc.get("/bench/count")[1])
    print(f"  stream cpu: naive faust {results['naive_faust']['events_per_s']:>9.0f} events/s", flush=True)
    raw = run_json_child(
        "raw consume",
        [PYTHON, "-m", "bench.raw_consume", "--bootstrap", bootstrap, "--topic", topic, "--expected", str(n)],
        {},
        timeout=timeout,
    )
    raw["events_per_s"] = raw["count"] / raw["elapsed_s"]
    results["raw_consume"] = raw
    print(f"  stream cpu: raw consume {raw['events_per_s']:>9.0f} records/s", flush=True)
    return results


def check_cpu_state(worker: Child, objects: int, events: int) -> dict[str, Any]:
    """Sample objects' state: each must have applied all its events, the last seq last."""
    per_object, extra = divmod(events, objects)
    bad: list[str] = []
    sample = sorted({0, objects // 3, objects // 2, objects - 1, *range(0, objects, max(1, objects // 50))})
    for index in sample:
        status, body = worker.get(f"/objects/chcpu_{index:08d}")
        expected = per_object + (1 if index < extra else 0)
        state = msgspec.json.decode(body) if status == 200 else {}
        if state.get("events_applied") != expected or state.get("fields", {}).get("seq") != expected - 1:
            bad.append(f"chcpu_{index:08d}: {status} {state.get('events_applied')} {state.get('fields')}")
    return {"sampled": len(sample), "wrong": bad[:5], "ok": not bad}


def io_bound(bootstrap: str, prefix: str, sizes: Sizes) -> dict[str, Any]:
    """I/O-bound (5 ms per event): hookstream worker vs sequential per partition; per-object order in both."""
    prefix = prefix + "io."
    topic = prefix + "charge"
    n, objects = sizes.io_events, sizes.io_objects
    publish(bootstrap, charge_records(prefix, n, objects, id_tag="chio"))
    print(f"  stream io: published {n} events over {objects} ids", flush=True)
    results: dict[str, Any] = {"events": n, "objects": objects, "io_ms": 5}
    with hookstream_worker(bootstrap, prefix, "bench.handlers_io", BENCH_IO_MS="5") as worker:
        results["hookstream"] = time_until(worker, hookstream_count, n, max(120.0, n / 100))
        results["hookstream"]["outcomes"] = processed(worker)
        results["hookstream"].update(check_io_state(worker, objects, n))
    print(
        f"  stream io: hookstream {results['hookstream']['events_per_s']:>9.0f} events/s, "
        f"order violations {results['hookstream']['order_violations']}",
        flush=True,
    )
    command = [PYTHON, "-m", "bench.sequential", "--bootstrap", bootstrap, "--topic", topic, "--expected", str(n)]
    sequential = run_json_child("sequential", command, {}, timeout=max(120.0, n / 50))
    sequential["events_per_s"] = sequential["count"] / sequential["elapsed_s"]
    results["sequential"] = sequential
    print(
        f"  stream io: sequential {sequential['events_per_s']:>9.0f} events/s, "
        f"order violations {sequential['order_violations']}",
        flush=True,
    )
    return results


def check_io_state(worker: Child, objects: int, events: int) -> dict[str, Any]:
    """Read every object's state: all its events applied, one at a time, seq 0, 1, 2... in order."""
    per_object, extra = divmod(events, objects)
    violations = overlaps = incomplete = 0
    for index in range(objects):
        expected = per_object + (1 if index < extra else 0)
        status, body = worker.get(f"/objects/chio_{index:08d}")
        if status != 200:
            incomplete += 1
            continue
        state = msgspec.json.decode(body)
        fields = state.get("fields", {})
        violations += int(fields.get("violations", 0))
        overlaps += int(fields.get("overlaps", 0))
        if state.get("events_applied") != expected or fields.get("last_seq") != expected - 1:
            incomplete += 1
    return {"order_violations": violations, "overlaps": overlaps, "incomplete_objects": incomplete}


def memory(bootstrap: str, prefix: str, sizes: Sizes) -> dict[str, Any]:
    """Worker RSS after ``memory_objects`` distinct ids (one small event each, RocksDB store), then after idle."""
    prefix = prefix + "mem."
    n = sizes.memory_objects
    start = time.monotonic()
    publish(bootstrap, charge_records(prefix, n, n, compact=True, id_tag="chmem"))
    print(f"  memory: published {n} events over {n} ids in {time.monotonic() - start:.1f}s", flush=True)
    with hookstream_worker(bootstrap, prefix, "bench.handlers_cpu", STATE_STORE="rocksdb://") as worker:
        run = time_until(worker, hookstream_count, n, max(300.0, n / 1000))
        after = rss_mib(worker.pid)
        time.sleep(sizes.idle_seconds)
        worker.check_alive()
        idle = rss_mib(worker.pid)
        peak = rss_mib(worker.pid, "VmHWM")
    print(f"  memory: RSS {after:.0f} MiB after {n} ids, {idle:.0f} MiB after {sizes.idle_seconds:.0f}s idle")
    return {
        "objects": n,
        "store": "rocksdb://",
        "rss_mib_after": round(after, 1),
        "rss_mib_after_idle": round(idle, 1),
        "rss_mib_peak": round(peak, 1),
        "idle_s": sizes.idle_seconds,
        "run": run,
    }

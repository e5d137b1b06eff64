"""Stream workloads: hookstream's worker against the naive Faust agent, the raw consume loop and the
sequential-per-partition consumer, over the same pre-published records on the same broker.

A worker is timed from its readiness (``GET /readyz`` answers 200: partitions assigned, tables recovered) to the
moment its own metrics say every event is finished (``hookstream_events_processed_total``, every outcome but
``retried``), polled; then its state is checked. Baselines are timed the same way from their own readiness.
"""

from __future__ import annotations

import contextlib
import statistics
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

#: Seconds between polls of a worker's count: each scrape costs the worker CPU; an end between polls is interpolated.
POLL = 0.2


@dataclass
class Sizes:
    """How many events each stream workload uses."""

    cpu_events: int
    cpu_objects: int
    io_events: int
    io_objects: int
    memory_objects: int
    idle_seconds: float
    rounds: int = 1  # of the CPU- and I/O-bound workloads, each round every contender in turn; medians reported


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


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median rate over rounds, with every round's numbers."""
    return {"events_per_s": statistics.median(run["events_per_s"] for run in runs), "runs": runs}


def cpu_bound(bootstrap: str, prefix: str, sizes: Sizes) -> dict[str, Any]:
    """CPU-bound: hookstream worker vs naive Faust vs raw consume over the same charge events, round after round
    (each worker a fresh consumer group reading from the beginning)."""
    prefix = prefix + "cpu."
    topic = prefix + "charge"
    n, objects = sizes.cpu_events, sizes.cpu_objects
    start = time.monotonic()
    publish(bootstrap, charge_records(prefix, n, objects, id_tag="chcpu"))
    print(f"  stream cpu: published {n} events over {objects} ids in {time.monotonic() - start:.1f}s", flush=True)
    timeout = max(120.0, n / 200)
    runs: dict[str, list[dict[str, Any]]] = {"hookstream": [], "naive_faust": [], "raw_consume": []}
    for round_ in range(1, sizes.rounds + 1):
        with hookstream_worker(bootstrap, prefix, "bench.handlers_cpu") as worker:
            run = time_until(worker, hookstream_count, n, timeout)
            run["outcomes"] = processed(worker)
            run["state_check"] = check_cpu_state(worker, objects, n)
            runs["hookstream"].append(run)
        with naive_faust_worker(bootstrap, topic) as faust_proc:
            run = time_until(faust_proc, faust_count, n, max(300.0, n / 200))
            run["count_page"] = msgspec.json.decode(faust_proc.get("/bench/count")[1])
            runs["naive_faust"].append(run)
        command = [PYTHON, "-m", "bench.raw_consume", "--bootstrap", bootstrap, "--topic", topic, "--expected", str(n)]
        raw = run_json_child("raw consume", command, {}, timeout=timeout)
        raw["events_per_s"] = raw["count"] / raw["elapsed_s"]
        runs["raw_consume"].append(raw)
        print(
            f"  stream cpu round {round_}: hookstream {runs['hookstream'][-1]['events_per_s']:>7.0f} events/s, "
            f"naive faust {runs['naive_faust'][-1]['events_per_s']:>6.0f}, raw consume {raw['events_per_s']:>7.0f}",
            flush=True,
        )
    results: dict[str, Any] = {"events": n, "objects": objects, **{name: medians(r) for name, r in runs.items()}}
    checks = [run["state_check"] for run in runs["hookstream"]]
    results["hookstream"]["state_check"] = {"ok": all(check["ok"] for check in checks), "runs": checks}
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
    hookstream_runs: list[dict[str, Any]] = []
    sequential_runs: list[dict[str, Any]] = []
    for round_ in range(1, sizes.rounds + 1):
        with hookstream_worker(bootstrap, prefix, "bench.handlers_io", BENCH_IO_MS="5") as worker:
            run = time_until(worker, hookstream_count, n, max(120.0, n / 100))
            run["outcomes"] = processed(worker)
            run.update(check_io_state(worker, objects, n))
            hookstream_runs.append(run)
        command = [PYTHON, "-m", "bench.sequential", "--bootstrap", bootstrap, "--topic", topic, "--expected", str(n)]
        sequential = run_json_child("sequential", command, {}, timeout=max(120.0, n / 50))
        sequential["events_per_s"] = sequential["count"] / sequential["elapsed_s"]
        sequential_runs.append(sequential)
        print(
            f"  stream io round {round_}: hookstream {run['events_per_s']:>7.0f} events/s (order violations "
            f"{run['order_violations']}), sequential {sequential['events_per_s']:>6.0f} (order violations "
            f"{sequential['order_violations']})",
            flush=True,
        )
    results: dict[str, Any] = {"events": n, "objects": objects, "io_ms": 5}
    results["hookstream"] = medians(hookstream_runs)
    for key in ("order_violations", "overlaps", "incomplete_objects"):  # over every round: any one counts
        results["hookstream"][key] = sum(run[key] for run in hookstream_runs)
    results["sequential"] = medians(sequential_runs)
    results["sequential"]["order_violations"] = sum(run["order_violations"] for run in sequential_runs)
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

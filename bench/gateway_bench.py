"""Gateway workload: hookstream's gateway, the HTTP ceiling, the naive gateway and stock uvicorn under wrk, in turn.

Each server is its own process on the same embedded broker. One signed ~3 KB event is the body of every request
(re-signed before each measured run, so its timestamp stays well within the tolerance); 64 connections; after
a warm-up, the servers are measured round after round so that noise on a shared machine spreads over all of
them; medians are reported, with each process's CPU seconds per run. Each round ends with the durable bound
(bench/produce_bound.py): the gateway's producer alone with one record in flight per connection. Then hookstream's
gateway is paced at half its measured maximum rate (wrk's per-request ``delay()``) and its p99 is reported.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import PYTHON, SECRET, Child, child, cpu_seconds, gateway_body, run_json_child, wait_until_ok
from bench.http_servers import WRK_REPORT, wrk_result
from gateway.signature import sign
from ops.process import free_port

WEBHOOK = "/webhooks/stripe"

LUA = (
    """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Stripe-Signature"] = %(signature)s
local f = assert(io.open(%(body)s, "rb"))
wrk.body = f:read("*a")
f:close()
%(delay)s
"""
    + WRK_REPORT
)


@dataclass
class Settings:
    """How long and how often to drive each server."""

    duration: int
    warmup: int
    repetitions: int
    connections: int = 64
    threads: int = 2


@dataclass
class WrkRun:
    """One wrk run: rate, latency, failures, and CPU seconds each process spent during it."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_s: dict[str, float]


def write_script(directory: Path, body: bytes, delay_ms: float | None) -> Path:
    """A wrk Lua script posting ``body`` freshly signed; with ``delay_ms``, each connection waits that long
    before each request (pacing)."""
    (directory / "body.json").write_bytes(body)
    delay = f"function delay()\n  return {delay_ms:.3f}\nend\n" if delay_ms is not None else ""
    script = directory / ("paced.lua" if delay_ms is not None else "post.lua")
    script.write_text(
        LUA
        % {
            "signature": json.dumps(sign(body, SECRET)),
            "body": json.dumps(str(directory / "body.json")),
            "delay": delay,
        }
    )
    return script


def run_wrk(url: str, script: Path, seconds: int, settings: Settings, watched: dict[str, int]) -> WrkRun:
    """Drive ``url`` for ``seconds``; CPU seconds of every watched PID over the run."""
    before = {name: cpu_seconds(pid) for name, pid in watched.items()}
    command = [
        "wrk",
        f"-t{settings.threads}",
        f"-c{settings.connections}",
        f"-d{seconds}s",
        "--timeout",
        "30s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)  # the servers are children too, but still running
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = {name: cpu_seconds(pid) for name, pid in watched.items()}
    cpu_s = {name: round(after[name] - before[name], 2) for name in watched}
    cpu_s["wrk"] = round(wrk_after.ru_utime + wrk_after.ru_stime - wrk_before.ru_utime - wrk_before.ru_stime, 2)
    return WrkRun(**wrk_result(output), cpu_s=cpu_s)


def check_post(proc: Child, body: bytes, timeout: float = 60.0) -> None:
    """Wait until a signed POST answers 200 (the server is up and, for gateways, publishing)."""
    import http.client

    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        proc.check_alive()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=10)
            conn.request("POST", WEBHOOK, body=body, headers={"Stripe-Signature": sign(body, SECRET)})
            answer = conn.getresponse()
            answer.read()
            conn.close()
            if answer.status == 200:
                return
            last = answer.status
        except OSError as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"{proc.name} never answered 200 to a signed POST (last: {last}):\n{proc.output()}")


def cpu_us_per_request(run: WrkRun, seconds: int, processes: tuple[str, ...]) -> float:
    """CPU time ``processes`` spent per request answered in ``run``."""
    return 1e6 * sum(run.cpu_s[name] for name in processes) / max(run.requests_per_s * seconds, 1.0)


def summarise(runs: list[WrkRun], seconds: int, processes: tuple[str, ...]) -> dict[str, Any]:
    """Medians over runs, with the CPU per request of the server (``processes[0]``) and of all ``processes`` (the
    server, the broker it uses, wrk), plus the runs."""
    cpu_names = runs[0].cpu_s.keys()
    return {
        "cpu_us_per_request": statistics.median(cpu_us_per_request(r, seconds, processes[:1]) for r in runs),
        "machine_cpu_us_per_request": statistics.median(cpu_us_per_request(r, seconds, processes) for r in runs),
        "requests_per_s": statistics.median(r.requests_per_s for r in runs),
        "p50_ms": statistics.median(r.p50_ms for r in runs),
        "p99_ms": statistics.median(r.p99_ms for r in runs),
        "errors": sum(r.errors for r in runs),
        "cpu_s_per_run": {name: statistics.median(r.cpu_s[name] for r in runs) for name in cpu_names},
        "runs": [asdict(r) for r in runs],
    }


def produce_bound(bootstrap: str, broker_pid: int, settings: Settings, topic_prefix: str) -> dict[str, Any]:
    """One run of bench/produce_bound.py: the gateway's producer alone, one record in flight per connection."""
    command = [
        *(PYTHON, "-m", "bench.produce_bound", "--bootstrap", bootstrap, "--topic-prefix", topic_prefix),
        *("--in-flight", str(settings.connections), "--seconds", str(settings.duration), "--warmup", "2"),
    ]
    broker_before = cpu_seconds(broker_pid)
    result = run_json_child("produce-bound", command, {}, timeout=settings.duration + 120)
    result["broker_cpu_s"] = round(cpu_seconds(broker_pid) - broker_before, 2)
    return result


def run(bootstrap: str, broker_pid: int, settings: Settings, prefix: str) -> dict[str, Any]:
    """Start the four servers, measure them and the durable bound in turn, then hookstream's gateway at half
    its maximum rate."""
    body = gateway_body()
    ports = {name: free_port() for name in ("hookstream", "ceiling", "naive", "stock")}
    gateway_env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "STRIPE_WEBHOOK_SECRETS": SECRET,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(ports["hookstream"]),
        "TOPIC_PREFIX": prefix + "hs.",
        "LOG_LEVEL": "WARNING",
    }
    commands = {
        "hookstream": [PYTHON, "-m", "ops.cli", "gateway"],
        "ceiling": [PYTHON, "-m", "bench.ceiling", "--port", str(ports["ceiling"])],
        "stock": [PYTHON, "-m", "bench.ceiling", "--port", str(ports["stock"]), "--stock"],
        "naive": [
            *(PYTHON, "-m", "bench.naive_gateway", "--port", str(ports["naive"]), "--bootstrap", bootstrap),
            *("--secret", SECRET, "--prefix", prefix + "naive."),
        ],
    }
    from bench.common import create_topics

    create_topics(bootstrap, [prefix + name + ".payment_intent" for name in ("hs", "naive", "bound")])
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        procs = {
            name: stack.enter_context(child(name, command, gateway_env if name == "hookstream" else {}, ports[name]))
            for name, command in commands.items()
        }
        wait_until_ok(procs["hookstream"], "/readyz")
        for proc in procs.values():
            check_post(proc, body)
        watched = {**{name: proc.pid for name, proc in procs.items()}, "broker": broker_pid}
        urls = {name: f"http://127.0.0.1:{proc.port}{WEBHOOK}" for name, proc in procs.items()}
        print(f"  gateway: POST body {len(body)} bytes, {settings.connections} connections", flush=True)
        for url in urls.values():
            run_wrk(url, write_script(Path(tmp), body, None), settings.warmup, settings, watched)
        runs: dict[str, list[WrkRun]] = {name: [] for name in urls}
        bounds: list[dict[str, Any]] = []
        for repetition in range(settings.repetitions):
            for name, url in urls.items():
                one = run_wrk(url, write_script(Path(tmp), body, None), settings.duration, settings, watched)
                runs[name].append(one)
                print(
                    f"  gateway round {repetition + 1}: {name:<10} {one.requests_per_s:>8.0f} req/s  "
                    f"p99 {one.p99_ms:>8.1f} ms  errors {one.errors}",
                    flush=True,
                )
            bounds.append(produce_bound(bootstrap, broker_pid, settings, prefix + "bound."))
            print(
                f"  gateway round {repetition + 1}: {'bound':<10} {bounds[-1]['records_per_s']:>8.0f} rec/s  "
                f"p99 {bounds[-1]['p99_ms']:>8.1f} ms  errors {bounds[-1]['errors']}",
                flush=True,
            )
        uses_broker = {"hookstream": True, "naive": True, "ceiling": False, "stock": False}
        results: dict[str, Any] = {
            name: summarise(
                name_runs, settings.duration, (name, "wrk", "broker") if uses_broker[name] else (name, "wrk")
            )
            for name, name_runs in runs.items()
        }
        results["produce_bound"] = {
            "records_per_s": statistics.median(b["records_per_s"] for b in bounds),
            "p50_ms": statistics.median(b["p50_ms"] for b in bounds),
            "runs": bounds,
        }
        target = results["hookstream"]["requests_per_s"] / 2
        # wrk's delay() runs after each answer, so a connection's period is delay + latency: calibrate once,
        # taking off the per-request time the first paced run showed, then measure.
        delay_ms = settings.connections / target * 1000
        calibration = run_wrk(
            urls["hookstream"], write_script(Path(tmp), body, delay_ms), settings.warmup, settings, watched
        )
        overhead_ms = settings.connections / max(calibration.requests_per_s, 1.0) * 1000 - delay_ms
        delay_ms = max(0.0, delay_ms - max(0.0, overhead_ms))
        paced = run_wrk(
            urls["hookstream"], write_script(Path(tmp), body, delay_ms), settings.duration, settings, watched
        )
        print(
            f"  gateway at half rate: target {target:.0f} req/s, achieved {paced.requests_per_s:.0f}, "
            f"p99 {paced.p99_ms:.1f} ms",
            flush=True,
        )
        for proc in procs.values():
            proc.check_alive()
    results["half_rate"] = {"target_requests_per_s": target, "delay_ms_per_connection": delay_ms, **asdict(paced)}
    results["body_bytes"] = len(body)
    results["settings"] = asdict(settings)
    return results

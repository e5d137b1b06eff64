"""``make bench``: hookstream against its baselines, in one run on one embedded broker.

Prints a table (workload | hookstream | baseline | ratio | target | met?) and writes ``bench/results.json``.
``QUICK=1`` in the environment: smaller workloads and shorter runs (under 3 minutes).

    PYTHONPATH=. python -m bench [--only gateway,cpu,io,memory] [--output bench/results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import gateway_bench, stream_bench
from bench.common import cpu_seconds, rss_mib
from ops.broker import EmbeddedBroker
from ops.process import free_port

WORKLOADS = ("gateway", "cpu", "io", "memory")


@dataclass
class Mode:
    """The sizes of one mode (quick or full)."""

    name: str
    gateway: gateway_bench.Settings
    streams: stream_bench.Sizes


QUICK = Mode(
    "quick",
    gateway_bench.Settings(duration=4, warmup=2, repetitions=1),
    stream_bench.Sizes(
        cpu_events=20_000,
        cpu_objects=10_000,
        io_events=10_000,
        io_objects=1_000,
        memory_objects=100_000,
        idle_seconds=10,
    ),
)
FULL = Mode(
    "full",
    gateway_bench.Settings(duration=10, warmup=5, repetitions=3),
    stream_bench.Sizes(
        cpu_events=200_000,
        cpu_objects=100_000,
        io_events=50_000,
        io_objects=1_000,
        memory_objects=1_000_000,
        idle_seconds=30,
        rounds=3,
    ),
)


@dataclass
class Row:
    """One line of the table."""

    workload: str
    hookstream: str
    baseline: str
    ratio: str
    target: str
    met: bool | None


def ratio(a: float, b: float) -> float:
    """a / b, or 0 when b is 0."""
    return a / b if b else 0.0


def _of_rounds(workload: dict[str, Any]) -> str:
    rounds = len(workload["hookstream"]["runs"])
    return f", median of {rounds}" if rounds > 1 else ""


def summarise(raw: dict[str, Any], mode: Mode) -> tuple[dict[str, Any], list[Row]]:
    """The headline keys of results.json and the table rows, from the raw numbers."""
    keys: dict[str, Any] = {}
    rows: list[Row] = []
    gateway = raw.get("gateway")
    if isinstance(gateway, dict) and "error" not in gateway:
        hs, ceiling, naive = (gateway[k]["requests_per_s"] for k in ("hookstream", "ceiling", "naive"))
        bound = gateway["produce_bound"]["records_per_s"]
        stock = gateway["stock"]["requests_per_s"]
        p99 = gateway["half_rate"]["p99_ms"]
        keys |= {
            "gateway_vs_ceiling": ratio(hs, ceiling),
            "gateway_vs_naive": ratio(hs, naive),
            "gateway_p99_ms": p99,
            "gateway_requests_per_s": hs,
            "ceiling_requests_per_s": ceiling,
            "naive_gateway_requests_per_s": naive,
            "stock_ceiling_requests_per_s": stock,
            "gateway_vs_stock_ceiling": ratio(hs, stock),
            "produce_bound_records_per_s": bound,
            "gateway_vs_produce_bound": ratio(hs, bound),
            "gateway_p99_ms_at_max": gateway["hookstream"]["p99_ms"],
            "naive_gateway_p99_ms_at_max": gateway["naive"]["p99_ms"],
            "gateway_half_rate_achieved_requests_per_s": gateway["half_rate"]["requests_per_s"],
            "gateway_cpu_us_per_request": gateway["hookstream"]["cpu_us_per_request"],
            "ceiling_cpu_us_per_request": gateway["ceiling"]["cpu_us_per_request"],
        }
        rows += [
            Row(
                "gateway req/s vs HTTP ceiling",
                f"{hs:,.0f}",
                f"{ceiling:,.0f}",
                f"{hs / ceiling:.2f}",
                ">= 0.60",
                hs / ceiling >= 0.60,
            ),
            Row(
                "gateway req/s vs naive gateway",
                f"{hs:,.0f}",
                f"{naive:,.0f}",
                f"{ratio(hs, naive):.1f}x",
                ">= 10x",
                ratio(hs, naive) >= 10,
            ),
            # Not targets: the ceiling on uvicorn as shipped, and how far durability alone caps any gateway here.
            Row(
                "gateway req/s vs stock uvicorn (no limits, two writes)",
                f"{hs:,.0f}",
                f"{stock:,.0f}",
                f"{ratio(hs, stock):.2f}",
                "",
                None,
            ),
            Row(
                f"durable bound: producer alone, {gateway['settings']['connections']} in flight, vs ceiling",
                f"{bound:,.0f}",
                f"{ceiling:,.0f}",
                f"{ratio(bound, ceiling):.2f}",
                "",
                None,
            ),
            Row(
                "gateway req/s vs durable bound",
                f"{hs:,.0f}",
                f"{bound:,.0f}",
                f"{ratio(hs, bound):.2f}",
                "",
                None,
            ),
            # Each server is one event loop that runs at one core's full speed under this load: the inverse ratio
            # of their CPU per request is what the first row can reach with the gateway's work as it stands.
            Row(
                "server CPU us/request (one event loop each): ceiling / gateway",
                f"{gateway['hookstream']['cpu_us_per_request']:.0f}",
                f"{gateway['ceiling']['cpu_us_per_request']:.0f}",
                f"{ratio(gateway['ceiling']['cpu_us_per_request'], gateway['hookstream']['cpu_us_per_request']):.2f}",
                "",
                None,
            ),
            Row(
                f"gateway p99 ms at half rate ({gateway['half_rate']['requests_per_s']:,.0f}/s)",
                f"{p99:.1f}",
                "",
                "",
                "< 25 ms",
                p99 < 25,
            ),
        ]
    elif gateway is not None:
        rows.append(Row("gateway", "error", "", "", "", None))
    cpu = raw.get("cpu")
    if isinstance(cpu, dict) and "error" not in cpu:
        hs, faust, consume = (cpu[k]["events_per_s"] for k in ("hookstream", "naive_faust", "raw_consume"))
        keys |= {
            "stream_vs_naive_faust": ratio(hs, faust),
            "stream_vs_raw_consume": ratio(hs, consume),
            "stream_events_per_s": hs,
            "naive_faust_events_per_s": faust,
            "raw_consume_records_per_s": consume,
            "stream_state_ok": cpu["hookstream"]["state_check"]["ok"],
        }
        rows += [
            Row(
                f"stream cpu ev/s vs naive Faust ({cpu['events']:,} ev{_of_rounds(cpu)})",
                f"{hs:,.0f}",
                f"{faust:,.0f}",
                f"{ratio(hs, faust):.1f}x",
                ">= 10x",
                ratio(hs, faust) >= 10,
            ),
            Row(
                "stream cpu ev/s vs raw consume",
                f"{hs:,.0f}",
                f"{consume:,.0f}",
                f"{ratio(hs, consume):.2f}",
                ">= 0.15",
                ratio(hs, consume) >= 0.15,
            ),
        ]
    elif cpu is not None:
        rows.append(Row("stream cpu", "error", "", "", "", None))
    io = raw.get("io")
    if isinstance(io, dict) and "error" not in io:
        hs, seq = io["hookstream"]["events_per_s"], io["sequential"]["events_per_s"]
        hs_bad = io["hookstream"]["order_violations"] + io["hookstream"]["overlaps"]
        hs_bad += io["hookstream"]["incomplete_objects"]
        seq_bad = io["sequential"]["order_violations"]
        keys |= {
            "io_bound_vs_sequential": ratio(hs, seq),
            "io_bound_events_per_s": hs,
            "sequential_events_per_s": seq,
            "io_bound_order_violations": io["hookstream"]["order_violations"],
            "sequential_order_violations": seq_bad,
        }
        rows += [
            Row(
                f"stream io (5 ms) ev/s vs sequential ({io['events']:,} ev{_of_rounds(io)})",
                f"{hs:,.0f}",
                f"{seq:,.0f}",
                f"{ratio(hs, seq):.1f}x",
                ">= 50x",
                ratio(hs, seq) >= 50,
            ),
            Row("stream io order violations", str(hs_bad), str(seq_bad), "", "0", hs_bad == 0 and seq_bad == 0),
        ]
    elif io is not None:
        rows.append(Row("stream io", "error", "", "", "", None))
    mem = raw.get("memory")
    if isinstance(mem, dict) and "error" not in mem:
        after, idle = mem["rss_mib_after"], mem["rss_mib_after_idle"]
        keys |= {
            "worker_rss_mib_1m_ids": after,
            "worker_rss_mib_after_idle": idle,
            "worker_rss_ids": mem["objects"],
        }
        ids = f"{mem['objects']:,}"
        rows += [
            Row(f"worker RSS MiB after {ids} ids (rocksdb)", f"{after:.0f}", "", "", "< 1024", after < 1024),
            Row(
                f"worker RSS MiB after {mem['idle_s']:.0f}s idle",
                f"{idle:.0f}",
                f"{after:.0f}",
                f"{ratio(idle, after):.2f}",
                "no growth (<= 1.05)",
                ratio(idle, after) <= 1.05,
            ),
        ]
    elif mem is not None:
        rows.append(Row("memory", "error", "", "", "", None))
    if mode.name == "quick":
        for row in rows:
            if "1m_ids" in row.workload:
                row.workload += " (quick)"
    return keys, rows


def print_table(rows: list[Row]) -> None:
    """Plain-text table."""
    headers = ("workload", "hookstream", "baseline", "ratio", "target", "met?")
    cells = [
        (r.workload, r.hookstream, r.baseline, r.ratio, r.target, {True: "yes", False: "NO", None: "-"}[r.met])
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print("\n" + line + "\n" + "-+-".join("-" * w for w in widths))
    for c in cells:
        print(" | ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths, strict=True))))


def main() -> None:
    """Start the broker, run the chosen workloads, print the table, write results.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated: " + ", ".join(WORKLOADS))
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results.json")
    args = parser.parse_args()
    chosen = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = set(chosen) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if "gateway" in chosen and shutil.which("wrk") is None:  # before minutes of the other workloads, not after
        parser.error("the gateway workload needs wrk on PATH (`make bench` installs Debian's wrk)")
    mode = QUICK if os.environ.get("QUICK", "") not in ("", "0") else FULL
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    print(f"hookstream bench, {mode.name} mode, {os.cpu_count()} CPUs, workloads: {', '.join(chosen)}", flush=True)
    started = time.monotonic()
    raw: dict[str, Any] = {}
    broker_stats: dict[str, float] = {}
    with EmbeddedBroker(free_port()) as broker:
        assert broker.process is not None
        broker_pid = broker.process.pid
        steps: dict[str, Callable[[], dict[str, Any]]] = {
            "gateway": lambda: gateway_bench.run(broker.bootstrap_servers, broker_pid, mode.gateway, prefix + "gw."),
            "cpu": lambda: stream_bench.cpu_bound(broker.bootstrap_servers, prefix, mode.streams),
            "io": lambda: stream_bench.io_bound(broker.bootstrap_servers, prefix, mode.streams),
            "memory": lambda: stream_bench.memory(broker.bootstrap_servers, prefix, mode.streams),
        }
        for name in chosen:
            print(f"{name}:", flush=True)
            step_start = time.monotonic()
            try:
                raw[name] = steps[name]()
            except Exception as exc:  # one broken workload must not hide the others' numbers
                traceback.print_exc()
                raw[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            raw[name]["wall_s"] = round(time.monotonic() - step_start, 1)
        broker_stats = {"cpu_s": cpu_seconds(broker_pid), "rss_mib": rss_mib(broker_pid)}
    keys, rows = summarise(raw, mode)
    print_table(rows)
    wall = time.monotonic() - started
    print(f"\n{mode.name} mode, {wall:.0f}s wall; results in {args.output}")
    results = {
        **keys,
        "nproc": os.cpu_count(),
        "mode": mode.name,
        "all_targets_met": all(r.met for r in rows if r.met is not None) and bool(rows),
        "table": [asdict(r) for r in rows],
        "wall_s": round(wall, 1),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "broker": broker_stats,
        "sizes": {"gateway": asdict(mode.gateway), "streams": asdict(mode.streams)},
        "raw": raw,
    }
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    failed = [name for name in chosen if "error" in raw.get(name, {})]
    if failed:  # the others' numbers are written; the run still fails
        sys.exit(f"workloads that failed: {', '.join(failed)} (the traceback is above)")


if __name__ == "__main__":
    main()

"""Measure the HTTP ceiling of candidate server stacks for the gateway, with wrk over loopback.

Each stack answers a POST of a Stripe-sized event with 200 and a small JSON body, doing no other work,
so the numbers are the most any gateway built on that stack could do on one process. Every server runs
as its own single-worker subprocess; the servers are measured in turn, round after round, so that noise
on a shared machine spreads over all of them. Only the ratios within one run are worth comparing.

    python bench/http_servers.py [--duration 10] [--repetitions 3] [--json results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
PORTS = range(20000, 21000)
RESPONSE = b'{"ok":true}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(RESPONSE)).encode())]
STACKS = ("uvicorn", "granian", "aiohttp")

Scope = dict[str, Any]
Message = dict[str, Any]


async def app(
    scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    """The raw ASGI app: read the whole body, answer 200 with a small JSON body."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": RESPONSE})


def serve_uvicorn(port: int) -> None:
    """Serve the raw ASGI app on stock uvicorn with httptools and uvloop (the gateway's server adds
    gateway/protocol.py and its settings: ``gateway.server.server_config``)."""
    import uvicorn

    uvicorn.run(
        app,
        host=HOST,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
    )


def serve_aiohttp(port: int) -> None:
    """Serve an equivalent aiohttp.web handler on uvloop."""
    import asyncio

    import uvloop
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=RESPONSE, content_type="application/json")

    async def main() -> None:
        application = web.Application()
        application.router.add_post("/{tail:.*}", handle)
        runner = web.AppRunner(application, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, HOST, port).start()
        await asyncio.Event().wait()

    uvloop.run(main())


def server_command(stack: str, port: int) -> list[str]:
    """The command line that serves ``stack`` on ``port`` in one process (granian: one worker)."""
    if stack == "granian":
        here = Path(__file__).resolve()
        return [
            *(sys.executable, "-m", "granian", "--interface", "asgi", "--loop", "uvloop", "--workers", "1"),
            *("--host", HOST, "--port", str(port), "--no-ws", "--no-access-log", "--log-level", "warning"),
            *("--working-dir", str(here.parent), f"{here.stem}:app"),
        ]
    return [sys.executable, __file__, "--serve", stack, "--port", str(port)]


def free_port(taken: set[int]) -> int:
    """A port in our range that nothing listens on."""
    for port in PORTS:
        if port in taken:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


def wait_ready(process: subprocess.Popen[bytes], url: str, body: bytes, timeout: float = 20.0) -> None:
    """Wait until the server answers the benchmark request correctly."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: server exited with status {process.returncode}")
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200 and response.read() == RESPONSE:
                    return
                raise RuntimeError(f"{url}: unexpected answer {response.status}")
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextlib.contextmanager
def servers(stacks: list[str], body: bytes) -> Iterator[dict[str, str]]:
    """Start a server per stack (each in its own process group) and yield their URLs; stop them after."""
    processes: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, str] = {}
    taken: set[int] = set()
    try:
        for stack in stacks:
            port = free_port(taken)
            processes[stack] = subprocess.Popen(server_command(stack, port), start_new_session=True)
            urls[stack] = f"http://{HOST}:{port}/webhooks/stripe"
            wait_ready(processes[stack], urls[stack], body)
        yield urls
    finally:
        for process in processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


#: wrk Lua report, printed as one JSON line (shared with bench/gateway_bench.py); ``%``-formatting escaped
WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "\\nRESULT {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"p50_us\\": %%d, \\"p99_us\\": %%d, " ..
    "\\"errors\\": %%d, \\"non_2xx\\": %%d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""

LUA = (
    """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(%s, "rb"))
wrk.body = f:read("*a")
f:close()

"""
    + WRK_REPORT
)


@dataclass
class Run:
    """One wrk run against one stack."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def run_wrk(url: str, script: Path, seconds: int, connections: int, threads: int) -> Run:
    """Drive ``url`` with wrk for ``seconds`` and return what it measured."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script)]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    return Run(**wrk_result(output))


def wrk_result(output: str) -> dict[str, Any]:
    """Requests/s, p50 and p99 (ms) and failed requests from the ``RESULT`` line WRK_REPORT makes wrk print."""
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    return {
        "requests_per_s": result["requests"] / (result["duration_us"] / 1e6),
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "errors": result["errors"] + result["non_2xx"],
    }


def benchmark(args: argparse.Namespace) -> dict[str, list[Run]]:
    """Warm every stack up, then measure them in turn for each repetition."""
    from ops.fixtures import build_event, encode

    stacks = [s for s in STACKS if s != "granian" or importlib.util.find_spec("granian") is not None]
    if "granian" not in stacks:
        print("granian: skipped (not installed; pip install -e '.[bench]')")
    body = encode(build_event("payment_intent.succeeded"))
    print(f"POST body {len(body)} bytes, {args.connections} connections, {args.threads} wrk threads")
    runs: dict[str, list[Run]] = {stack: [] for stack in stacks}
    with tempfile.TemporaryDirectory() as tmp, servers(stacks, body) as urls:
        (Path(tmp) / "body.json").write_bytes(body)
        script = Path(tmp) / "post.lua"
        script.write_text(LUA % json.dumps(str(Path(tmp) / "body.json")))
        for url in urls.values():
            run_wrk(url, script, args.warmup, args.connections, args.threads)
        for repetition in range(args.repetitions):
            for stack, url in urls.items():
                run = run_wrk(url, script, args.duration, args.connections, args.threads)
                runs[stack].append(run)
                print(f"  round {repetition + 1}: {stack:<8} {run.requests_per_s:>9.0f} req/s")
    return runs


def summarise(runs: dict[str, list[Run]]) -> list[dict[str, Any]]:
    """Median of each stack's runs, with the ratio to the best stack, best first."""
    rows: list[dict[str, Any]] = [
        {
            "stack": stack,
            "requests_per_s": statistics.median(r.requests_per_s for r in stack_runs),
            "p50_ms": statistics.median(r.p50_ms for r in stack_runs),
            "p99_ms": statistics.median(r.p99_ms for r in stack_runs),
            "errors": sum(r.errors for r in stack_runs),
            "runs": [asdict(r) for r in stack_runs],
        }
        for stack, stack_runs in runs.items()
    ]
    best = max(row["requests_per_s"] for row in rows)
    for row in rows:
        row["ratio_to_best"] = row["requests_per_s"] / best
    return sorted(rows, key=lambda row: -row["requests_per_s"])


def print_table(rows: list[dict[str, Any]]) -> None:
    """Print the summary as a plain-text table."""
    print(f"\n{'stack':<10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'ratio':>7}{'errors':>8}")
    for row in rows:
        print(
            f"{row['stack']:<10}{row['requests_per_s']:>10.0f}{row['p50_ms']:>9.2f}"
            f"{row['p99_ms']:>9.2f}{row['ratio_to_best']:>7.2f}{row['errors']:>8}"
        )


def main() -> None:
    """Parse the command line; either serve one stack (internal) or run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--repetitions", type=int, default=3, help="measured runs per stack (median)")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per stack")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--serve", choices=["uvicorn", "aiohttp"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        {"uvicorn": serve_uvicorn, "aiohttp": serve_aiohttp}[args.serve](args.port)
        return
    rows = summarise(benchmark(args))
    print_table(rows)
    if args.json:
        names = ("duration", "repetitions", "warmup", "connections", "threads")
        settings = {name: getattr(args, name) for name in names}
        args.json.write_text(json.dumps({"settings": settings, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()

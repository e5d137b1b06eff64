"""The soak: signed traffic through a real gateway into real workers while faults are injected, then the audit.

``make soak`` runs it for minutes; tests/test_soak.py runs a short one in ``make test``. What it does:

- starts an embedded broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` is set: then broker faults are skipped), one
  gateway and two workers (the recording test handlers, which keep every applied ``seq`` in the state);
- sends every object's events one after another (the next only after a 200, as each Stripe event is its own
  delivery), many objects at once, retrying refused or failed deliveries with backoff as Stripe does;
- on a schedule, SIGKILLs and restarts a worker, SIGTERMs and restarts the gateway, pauses the broker (SIGSTOP,
  then SIGCONT: the embedded broker keeps its data only in memory, so a paused broker is the outage it can
  survive);
- at the end runs ``hookstream audit`` (in process) until nothing is pending, and compares every object's state
  with the one expected: every event applied exactly once, in order.

Exit status 0 only when nothing acknowledged is missing or applied twice and every state is as expected.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.signature import sign
from ops.audit import AuditReport, audit_until_settled
from ops.broker import EmbeddedBroker
from ops.dev import EMBEDDED_BROKER_ENV
from ops.fixtures import build_event, encode
from ops.process import free_port, stop_process
from ops.settings import Settings
from streams.consumer import LOG_BEHIND, RECORDS_GONE
from tests.support import REPO, http_request

SECRET = "whsec_soak_" + "s" * 24
BASE_CREATED = 1_790_000_000
HANDLERS = "tests.handlers.recording"


@dataclass
class Service:
    """A hookstream process the soak starts, stops and restarts by PID."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_dir: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.log_dir / f"{self.name}.{self.starts}.log", "wb")  # the child writes it
        self.process = subprocess.Popen(self.argv, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        return stop_process(self.process, timeout=timeout, sig=sig) if self.process is not None else None


@dataclass
class Traffic:
    """What the sender did, for the progress line and the report."""

    events: int = 0  # distinct events acknowledged with a 200
    requests: int = 0
    answers: Counter[str] = field(default_factory=Counter)  # "200", "503", "error: ..." per request
    objects_done: int = 0


class Sender:
    """Posts each object's events in order, each until it gets a 200, like Stripe's retries (but faster)."""

    def __init__(self, port: int, per_object: int, rate: float, timeout: float = 15.0) -> None:
        self.port, self.per_object, self.rate, self.timeout = port, per_object, rate, timeout
        self.traffic = Traffic()
        self.expected: dict[str, list[str]] = {}  # object id -> event ids, in order
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next_slot = time.monotonic()

    async def run(self, lanes: int, stop: asyncio.Event) -> None:
        """Send until ``stop`` is set; each lane then finishes the object it is on."""
        counter = itertools.count()
        await asyncio.gather(*(self._lane(counter, stop) for _ in range(lanes)))

    async def _lane(self, counter: itertools.count[int], stop: asyncio.Event) -> None:
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while not stop.is_set():
            object_id = f"ch_soak_{next(counter)}"
            self.expected[object_id] = []
            for seq in range(self.per_object):  # the object's events, one after another, each until accepted
                event = build_event(
                    "charge.updated",
                    object_id=object_id,
                    created=BASE_CREATED + seq,
                    object_fields={"metadata": {"seq": str(seq)}, "amount": 100 + seq},
                )
                self.expected[object_id].append(event["id"])
                body = encode(event)
                delay = 0.1
                while True:
                    await self._pace()
                    status, connection = await self._post(connection, body)
                    self.traffic.requests += 1
                    self.traffic.answers[status] += 1
                    if status == "200":
                        self.traffic.events += 1
                        break
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 2.0)
            self.traffic.objects_done += 1
        if connection is not None:
            connection[1].close()

    async def _pace(self) -> None:
        """At most ``rate`` requests per second over all lanes (the workers need CPU too)."""
        now = time.monotonic()
        slot = max(self._next_slot, now)
        self._next_slot = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)

    async def _post(
        self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None, body: bytes
    ) -> tuple[str, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None]:
        """One delivery on a keep-alive connection (opened when needed); the answer's status or the error."""
        request = (
            b"POST /webhooks/stripe HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
            b"Stripe-Signature: %b\r\nContent-Length: %d\r\n\r\n%b" % (sign(body, SECRET).encode(), len(body), body)
        )
        try:
            async with asyncio.timeout(self.timeout):
                if connection is None:
                    connection = await asyncio.open_connection("127.0.0.1", self.port)
                reader, writer = connection
                writer.write(request)
                status_line = await reader.readline()
                if not status_line:
                    raise ConnectionResetError("closed before answering")
                length, close = 0, False
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                    elif name.lower() == "connection" and value.strip().lower() == "close":
                        close = True
                await reader.readexactly(length)
                if close:
                    writer.close()
                    connection = None
                return status_line.split()[1].decode(), connection
        except (OSError, TimeoutError, asyncio.IncompleteReadError, IndexError, ValueError) as exc:
            if connection is not None:
                connection[1].close()
            return f"error: {type(exc).__name__}", None


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.broker: EmbeddedBroker | None = None
        self.broker_paused = False
        self.faults: list[tuple[float, str, str]] = []  # (seconds in, kind, what exactly)
        self.started = time.monotonic()
        tag = f"{os.getpid()}-{random.randrange(1 << 20):05x}"
        self.app_id, self.prefix = f"soak-{tag}", f"soak{tag}."
        self.gateway_port = free_port()

    # -- the stack ------------------------------------------------------------------------------------------
    def start(self) -> None:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        env = {**os.environ, "PYTHONPATH": REPO, "LOG_LEVEL": os.environ.get("SOAK_LOG_LEVEL", "WARNING")}
        if bootstrap is None:
            self.broker = EmbeddedBroker(free_port())
            self.broker.start()
            bootstrap = self.broker.bootstrap_servers
            env |= EMBEDDED_BROKER_ENV
        env |= {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "HOOKSTREAM_APP_ID": self.app_id,
            "TOPIC_PREFIX": self.prefix,
            "STRIPE_WEBHOOK_SECRETS": SECRET,
            "HOOKSTREAM_HANDLERS": HANDLERS,
            "GATEWAY_PUBLISH_TIMEOUT": "3",
        }
        self.env = env
        cli = [sys.executable, "-m", "ops.cli"]
        self.gateway = Service("gateway", [*cli, "gateway"], env | {"GATEWAY_PORT": str(self.gateway_port)}, self.work)
        self.workers = []
        for i in range(self.args.workers):
            worker_env = env | {
                "WORKER_WEB_PORT": str(free_port()),
                "WORKER_WEB_HOST": "127.0.0.1",
                "STATE_STORE": self.args.store,
                "WORKER_DATA_DIR": str(self.work / f"worker-{i}"),
            }
            self.workers.append(Service(f"worker-{i}", [*cli, "worker"], worker_env, self.work))
        for service in (self.gateway, *self.workers):
            service.start()
        self._wait_http(self.gateway_port, "/readyz", 60)
        for worker in self.workers:
            self._wait_http(int(worker.env["WORKER_WEB_PORT"]), "/healthz", 90)

    def stop(self) -> None:
        for service in (self.gateway, *self.workers):
            service.stop()
        if self.broker is not None:
            if self.broker_paused and self.broker.process is not None:
                self.broker.process.send_signal(signal.SIGCONT)
            self.broker.stop()

    def _wait_http(self, port: int, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if http_request(port, "GET", path, timeout=2).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"127.0.0.1:{port}{path} never answered 200; logs in {self.work}")

    # -- faults ---------------------------------------------------------------------------------------------
    async def inject_faults(self, until: float) -> None:
        """A fault every ``--fault-interval`` seconds until ``until``, and at least ``--min-faults`` of them."""
        kinds = ["kill worker", "stop gateway", "pause broker"] if self.broker else ["kill worker", "stop gateway"]
        for round_ in itertools.count():
            await asyncio.sleep(self.args.fault_interval)
            if time.monotonic() >= until and round_ >= self.args.min_faults:
                return
            kind = kinds[round_ % len(kinds)]
            if kind == "kill worker":
                worker = self.workers[(round_ // len(kinds)) % len(self.workers)]
                self._fault(kind, f"SIGKILL {worker.name}, restart after {self.args.outage:.0f}s")
                worker.stop(signal.SIGKILL)
                await asyncio.sleep(self.args.outage)
                worker.start()
            elif kind == "stop gateway":
                self._fault(kind, "SIGTERM gateway (drains in-flight requests), restart")
                await asyncio.to_thread(self.gateway.stop, signal.SIGTERM, 30.0)
                await asyncio.sleep(0.5)
                self.gateway.start()
            else:
                assert self.broker is not None and self.broker.process is not None
                self._fault(kind, f"pause broker (SIGSTOP) for {self.args.outage:.0f}s")
                self.broker.process.send_signal(signal.SIGSTOP)
                self.broker_paused = True
                await asyncio.sleep(self.args.outage)
                self.broker.process.send_signal(signal.SIGCONT)
                self.broker_paused = False

    def _fault(self, kind: str, what: str) -> None:
        at = time.monotonic() - self.started
        self.faults.append((at, kind, what))
        _say(f"\n[{at:6.1f}s] fault: {what}")

    # -- the run --------------------------------------------------------------------------------------------
    async def drive(self) -> Sender:
        sender = Sender(self.gateway_port, self.args.events_per_object, self.args.rate)
        until = time.monotonic() + self.args.duration
        progress = asyncio.create_task(self._progress(sender, until))
        stop = asyncio.Event()  # traffic lasts the duration, and until the last fault is over (--min-faults)
        sending = asyncio.create_task(sender.run(self.args.lanes, stop))
        await self.inject_faults(until)
        await asyncio.sleep(max(0.0, until - time.monotonic()))
        stop.set()
        await sending
        progress.cancel()
        return sender

    async def _progress(self, sender: Sender, until: float) -> None:
        tty = sys.stderr.isatty()
        while True:
            await asyncio.sleep(0.5 if tty else 5.0)
            t = sender.traffic
            left = max(0.0, until - time.monotonic())
            width = 30
            done = int(width * (1 - left / self.args.duration))
            errors = sum(n for k, n in t.answers.items() if k != "200")
            line = (
                f"[{'#' * done}{'.' * (width - done)}] {self.args.duration - left:5.0f}/{self.args.duration:.0f}s "
                f"events {t.events:,}  requests {t.requests:,} (not 200: {errors:,})  faults {len(self.faults)}"
            )
            _say(("\r" + line) if tty else line, end="" if tty else "\n")

    def settle(self, wait: float) -> AuditReport:
        """Bring every service back, then audit until nothing is pending."""
        for service in (self.gateway, *self.workers):
            if not service.alive:
                service.start()
        settings = Settings.from_env(self.env)
        return asyncio.run(audit_until_settled(settings, None, wait))

    def check_states(self, sender: Sender) -> list[str]:
        """Objects whose state is not exactly 'every event applied once, in order' (with why)."""
        port = int(self.workers[0].env["WORKER_WEB_PORT"])
        wrong = []
        for object_id, event_ids in sender.expected.items():
            response = http_request(port, "GET", f"/objects/{object_id}", timeout=30)
            if response.status != 200:
                wrong.append(f"{object_id}: HTTP {response.status}")
                continue
            state = response.json()
            seqs = state["fields"].get("seqs")
            if seqs != list(range(len(event_ids))) or state["events_applied"] != len(event_ids):
                wrong.append(f"{object_id}: seqs {seqs}, events_applied {state['events_applied']}")
            elif state["last_event_id"] != event_ids[-1]:
                wrong.append(f"{object_id}: last event {state['last_event_id']} not {event_ids[-1]}")
        return wrong

    def offset_reports(self) -> list[str]:
        """The workers' reports of records gone before they were read, or of a log behind its commit
        (streams/consumer.py). Nothing expires or is truncated in a soak: any such line is a false report."""
        marks = (RECORDS_GONE, LOG_BEHIND)
        return [
            line
            for path in sorted(self.work.glob("worker-*.log"))
            for line in path.read_text(errors="replace").splitlines()
            if any(mark in line for mark in marks)
        ]


def _say(text: str, end: str = "\n") -> None:
    print(text, end=end, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300, help="seconds of traffic (default 300)")
    parser.add_argument("--rate", type=float, default=400, help="requests per second at most (default 400)")
    parser.add_argument("--lanes", type=int, default=64, help="objects sent to at once (default 64)")
    parser.add_argument("--events-per-object", type=int, default=10, help="events per object (default 10)")
    parser.add_argument("--workers", type=int, default=2, help="workers in the group (default 2)")
    parser.add_argument("--store", default="rocksdb://", help="worker state store (default rocksdb://)")
    parser.add_argument("--fault-interval", type=float, default=20, help="seconds between faults (default 20)")
    parser.add_argument(
        "--min-faults", type=int, default=0, help="faults to inject at least, traffic going on until they are over"
    )
    parser.add_argument("--outage", type=float, default=5, help="seconds a killed/paused part stays down")
    parser.add_argument("--settle", type=float, default=300, help="seconds to wait for the workers to catch up")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="hookstream-soak-"))
    soak = Soak(args, work)
    _say(f"soak: {args.duration:.0f}s of traffic, faults every {args.fault_interval:.0f}s; logs in {work}")
    try:
        soak.start()
        sender = asyncio.run(soak.drive())
        _say("\ntraffic stopped; waiting for the workers to catch up, then auditing")
        report = soak.settle(args.settle)
        wrong = soak.check_states(sender)
        offset_reports = soak.offset_reports()
    finally:
        soak.stop()
    traffic = sender.traffic
    results: dict[str, Any] = {
        "duration_s": args.duration,
        "objects": len(sender.expected),
        "events_acknowledged": traffic.events,
        "requests": traffic.requests,
        "answers": dict(traffic.answers),
        "faults": [f"{at:.1f}s {what}" for at, _, what in soak.faults],
        "fault_counts": dict(Counter(kind for _, kind, _ in soak.faults)),
        "audit": {
            "acknowledged": report.acknowledged,
            "applied": report.applied,
            "missing": len(report.missing),
            "duplicated": len(report.duplicated),
            "pending": len(report.pending),
            "dead_lettered": len(report.dead_lettered),
            "stale": len(report.stale),
            "unhandled": len(report.unhandled),
        },
        "states_wrong": len(wrong),
        "offset_reports": len(offset_reports),
    }
    ok = report.ok and not report.pending and not wrong and not offset_reports and report.acknowledged == traffic.events
    results["ok"] = ok
    _say(
        "\n".join(
            [
                "",
                f"sent {traffic.events:,} events to {len(sender.expected):,} objects in {traffic.requests:,} requests "
                f"({', '.join(f'{k}: {n:,}' for k, n in sorted(traffic.answers.items()))})",
                f"faults injected: {len(soak.faults)} "
                f"({', '.join(f'{kind}: {n}' for kind, n in results['fault_counts'].items())})",
                *(f"  {line}" for line in results["faults"]),
                f"audit: acknowledged {report.acknowledged:,}, applied {report.applied:,}, "
                f"missing {len(report.missing)}, "
                f"duplicated {len(report.duplicated)}, pending {len(report.pending)}, dead-lettered "
                f"{len(report.dead_lettered)}",
                *([f"missing e.g. {report.missing[:10]}"] if report.missing else []),
                *([f"duplicated e.g. {report.duplicated[:10]}"] if report.duplicated else []),
                f"object states not as expected: {len(wrong)}" + (f" e.g. {wrong[:5]}" if wrong else ""),
                f"records reported gone or behind a commit: {len(offset_reports)}"
                + (f" e.g. {offset_reports[:2]}" if offset_reports else ""),
                f"events lost: {len(report.missing) + len(report.pending)}",
                "SOAK PASSED" if ok else f"SOAK FAILED (logs in {work})",
            ]
        )
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if ok:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""`hookstream dev` (what `make run` starts): the stack comes up, a pasted trigger line works, Ctrl-C stops it."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ops.broker import BrokerError, wait_for_kafka
from ops.process import free_port, stop_process
from tests.support import BrokerInfo, alive, children, http_request, wait_for

pytestmark = pytest.mark.integration


def test_dev_stack_starts_prints_secret_and_trigger_line_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """Also: a handler module added while it runs is live after the worker's restart, and the states applied
    before it are still there (the embedded broker keeps the changelog)."""
    gateway_port, broker_port, worker_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "STRIPE_WEBHOOK_SECRETS")}
    env["GATEWAY_PORT"] = str(gateway_port)
    env["WORKER_WEB_PORT"] = str(worker_port)
    env["WORKER_DATA_DIR"] = str(tmp_path / "worker-data")
    (tmp_path / "devhandlers").mkdir()
    (tmp_path / "devhandlers" / "__init__.py").write_text("")
    env["HOOKSTREAM_HANDLERS"] = "handlers,devhandlers"
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *filter(None, [env.get("PYTHONPATH")])])
    process = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "dev", "--broker-port", str(broker_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    lines: list[str] = []  # everything it prints, children's logs included, read as it comes (a full pipe blocks)

    def read() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            lines.append(raw.decode(errors="replace"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def wait_for_line(text: str) -> str:
        wait_for(lambda: process.poll() is not None or any(text in line for line in list(lines)), 90, repr(text))
        assert process.poll() is None, "dev exited early:\n" + "".join(lines)
        return next(line for line in list(lines) if text in line)

    def state_of(object_id: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        states: list[dict[str, Any]] = [{}]

        def fetched() -> bool:
            with contextlib.suppress(OSError):
                answer = http_request(worker_port, "GET", f"/objects/{object_id}", timeout=5)
                if answer.status == 200:
                    states.append(answer.json())
            return done(states[-1])

        wait_for(fetched, 90, f"the state of {object_id}", interval=0.3)
        return states[-1]

    def trigger(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "ops.cli", *args], capture_output=True, text=True, timeout=60, env=env
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith('200 {"received":true')
        return str(json.loads(done.stdout[4:])["id"])

    try:
        wait_for_line("Ctrl-C stops everything")
        banner = "".join(lines)
        assert f"kafka           127.0.0.1:{broker_port} (embedded)" in banner  # which brokers the stack uses
        assert "signing secret  whsec_" in banner
        # what other commands need against the embedded broker (replay failed without it)
        assert f"export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{broker_port} KAFKA_ENABLE_IDEMPOTENCE=false" in banner
        trigger_line = next(line for line in lines if "hookstream trigger" in line).strip()

        # listening once the banner shows
        wait_for(lambda: http_request(gateway_port, "GET", "/readyz").status == 200, 30, "the gateway ready")
        event_id = trigger(*shlex.split(trigger_line)[1:])

        # the worker applies it: the printed curl line shows the object's state moments later
        curl_line = next(line for line in lines if "curl " in line).strip()
        assert f":{worker_port}/objects/pi_demo" in curl_line
        state = state_of("pi_demo", lambda s: s.get("last_event_id") == event_id)
        assert state["object_type"] == "payment_intent" and state["status"] == "succeeded"
        for port in (gateway_port, worker_port):  # both answer on 127.0.0.1, and only there: the dev secret is public
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.2", port), timeout=2).close()

        # a new handler module: the worker restarts with it and subscribes to its topic
        (tmp_path / "devhandlers" / "payouts.py").write_text(
            "from streams.registry import on\n\n\n"
            '@on("payout.paid")\n'
            "async def paid(event, ctx):\n"
            '    ctx.fields["seen_by"] = "devhandlers"\n'
        )
        wait_for_line("changed; restarting the worker")
        payout_event = trigger("trigger", "payout.paid", "--object-id", "po_dev", "--url", trigger_line.split()[-1])
        payout = state_of("po_dev", lambda s: s.get("last_event_id") == payout_event)
        assert payout["fields"]["seen_by"] == "devhandlers"
        assert state_of("pi_demo", bool)["last_event_id"] == event_id  # recovered from the changelog

        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
        reader.join(10)
        assert "stopped" in "".join(lines[-5:])
        for port in (gateway_port, worker_port):
            with pytest.raises(OSError):
                http_request(port, "GET", "/healthz", timeout=2)
        with pytest.raises(BrokerError):
            wait_for_kafka("127.0.0.1", broker_port, 1)
    finally:
        started = children(process.pid) if process.poll() is None else []  # broker, gateway, worker: own sessions
        stop_process(process)
        for pid in started:  # what a failed stop left, by the PIDs the supervisor started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_closed_terminal_stops_the_stack_as_ctrl_c_does(broker: BrokerInfo, tmp_path: Path) -> None:
    """The gateway and the worker run in sessions of their own (Ctrl-C reaches the supervisor alone, which stops
    them in order): on SIGHUP, a closed terminal, the supervisor died and left them running, holding their ports."""
    gateway_port, worker_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "STRIPE_WEBHOOK_SECRETS"} | broker.env()
    env |= {
        "GATEWAY_PORT": str(gateway_port),
        "WORKER_WEB_PORT": str(worker_port),
        "WORKER_DATA_DIR": str(tmp_path / "worker-data"),
        "HOOKSTREAM_APP_ID": "dev-hangup",
    }
    with (tmp_path / "dev.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "ops.cli", "dev"], stdout=log, stderr=log, env=env)
        started: list[int] = []
        try:
            for port in (gateway_port, worker_port):  # both started (the worker answers /healthz from the start)
                wait_for(lambda port=port: _answers(port), 60, f"/healthz on {port}", interval=0.2)
            started = children(process.pid)
            assert len(started) == 2, started
            process.send_signal(signal.SIGHUP)
            assert process.wait(60) == 0, (tmp_path / "dev.log").read_text()
            left = [pid for pid in started if alive(pid)]
            assert not left, f"gateway and worker processes {left} outlived the supervisor"
        finally:
            stop_process(process)
            for pid in started:  # what a failed stop left, by the PIDs the supervisor started
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError):
        return http_request(port, "GET", "/healthz", timeout=2).status == 200
    return False


def test_the_stack_stops_when_its_embedded_broker_dies(tmp_path: Path) -> None:
    """The embedded broker keeps everything in memory: once it is gone, a worker left running crashed on the next
    one (its state and offsets ahead of an empty changelog), and its topics came back with the broker's defaults."""
    gateway_port, broker_port, worker_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "STRIPE_WEBHOOK_SECRETS")}
    env |= {
        "GATEWAY_PORT": str(gateway_port),
        "WORKER_WEB_PORT": str(worker_port),
        "WORKER_DATA_DIR": str(tmp_path / "worker-data"),
        "HOOKSTREAM_APP_ID": "dev-broker-dies",
    }
    command = [sys.executable, "-m", "ops.cli", "dev", "--broker-port", str(broker_port)]
    with (tmp_path / "dev.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log, env=env)
        started: list[int] = []
        try:
            for port in (gateway_port, worker_port):
                wait_for(lambda port=port: _answers(port), 60, f"/healthz on {port}", interval=0.2)
            started = children(process.pid)
            (broker,) = [pid for pid in started if b"tansu" in Path(f"/proc/{pid}/cmdline").read_bytes()]
            os.kill(broker, signal.SIGKILL)
            assert process.wait(60) == 1
            output = (tmp_path / "dev.log").read_text()
            assert "the embedded broker exited with status -9" in output, output[-3000:]
            assert not [pid for pid in started if alive(pid)], "the gateway or worker outlived the broker's stack"
        finally:
            stop_process(process)
            for pid in started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_handler_sources_follow_packages_namespaces_and_modules_created_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the dev stack watches to restart its worker: without importing anything."""
    from ops.dev import HandlerSources

    monkeypatch.chdir(tmp_path)  # the worker, run with python -m from here, finds modules here first
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "deep.py").write_text("")
    (tmp_path / "namespaced").mkdir()  # a namespace package: no __init__.py
    (tmp_path / "namespaced" / "handlers.py").write_text("")
    sources = HandlerSources(["pkg", "namespaced.handlers", "later"])
    assert sources.changed() == []

    (tmp_path / "pkg" / "sub" / "deep.py").write_text("x = 1\n")
    os.utime(tmp_path / "pkg" / "sub" / "deep.py", ns=(1, 1))  # a different mtime whatever the clock's resolution
    assert sources.changed() == [tmp_path / "pkg" / "sub" / "deep.py"]
    (tmp_path / "namespaced" / "more.py").write_text("")
    assert sources.changed() == [tmp_path / "namespaced" / "more.py"]
    (tmp_path / "later.py").write_text("")  # named in HOOKSTREAM_HANDLERS before it existed
    assert sources.changed() == [tmp_path / "later.py"]
    shutil.rmtree(tmp_path / "pkg" / "sub")  # a directory gone (a checkout): a change, not a crash
    assert sources.changed() == [tmp_path / "pkg" / "sub" / "deep.py"]
    assert sources.changed() == []
    monkeypatch.chdir(tmp_path.parent)
    shutil.rmtree(tmp_path)  # even the working directory (it was looked up at the start, as the worker did)
    assert len(sources.changed()) == 4

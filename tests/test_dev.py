"""`hookstream dev` (what `make run` starts): the stack comes up, a pasted trigger line works, Ctrl-C stops it."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops.broker import BrokerError, wait_for_kafka
from ops.process import free_port, stop_process
from tests.support import http_request

pytestmark = pytest.mark.integration


def test_dev_stack_starts_prints_secret_and_trigger_line_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    gateway_port, broker_port, worker_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "STRIPE_WEBHOOK_SECRETS")}
    env["GATEWAY_PORT"] = str(gateway_port)
    env["WORKER_WEB_PORT"] = str(worker_port)
    env["WORKER_DATA_DIR"] = str(tmp_path / "worker-data")
    process = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "dev", "--broker-port", str(broker_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        while not any("Ctrl-C stops everything" in line for line in lines):
            line = process.stdout.readline().decode()
            assert line, "dev exited early:\n" + "".join(lines)
            lines.append(line)
        banner = "".join(lines)
        assert f"kafka           127.0.0.1:{broker_port} (embedded)" in banner  # which brokers the stack uses
        assert "signing secret  whsec_" in banner
        trigger_line = next(line for line in lines if "hookstream trigger" in line).strip()

        deadline = time.monotonic() + 30
        while http_request(gateway_port, "GET", "/readyz").status != 200:  # listening once the banner shows
            assert time.monotonic() < deadline, "gateway never became ready"
            time.sleep(0.2)
        args = shlex.split(trigger_line)
        done = subprocess.run(
            [sys.executable, "-m", "ops.cli", *args[1:]], capture_output=True, text=True, timeout=60, env=env
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith('200 {"received":true')
        event_id = json.loads(done.stdout[4:])["id"]

        # the worker applies it: the printed curl line shows the object's state moments later
        curl_line = next(line for line in lines if "curl " in line).strip()
        assert f":{worker_port}/objects/pi_demo" in curl_line
        deadline = time.monotonic() + 90
        state: dict[str, object] = {}
        while state.get("last_event_id") != event_id:
            assert time.monotonic() < deadline, f"state never showed {event_id}: {state}"
            with contextlib.suppress(OSError):
                answer = http_request(worker_port, "GET", "/objects/pi_demo", timeout=5)
                if answer.status == 200:
                    state = answer.json()
            time.sleep(0.3)
        assert state["object_type"] == "payment_intent" and state["status"] == "succeeded"
        for port in (gateway_port, worker_port):  # both answer on 127.0.0.1, and only there: the dev secret is public
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.2", port), timeout=2).close()

        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
        assert "stopped" in process.stdout.read().decode()
        for port in (gateway_port, worker_port):
            with pytest.raises(OSError):
                http_request(port, "GET", "/healthz", timeout=2)
        with pytest.raises(BrokerError):
            wait_for_kafka("127.0.0.1", broker_port, 1)
    finally:
        stop_process(process)

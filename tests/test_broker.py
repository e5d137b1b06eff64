"""The embedded broker: starts, answers Kafka, stops by PID; `hookstream broker` does the same from the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ops.broker import BrokerError, EmbeddedBroker, wait_for_kafka
from ops.process import free_port, stop_process
from tests.support import partition_count

pytestmark = pytest.mark.integration


def test_embedded_broker_answers_and_stops() -> None:
    broker = EmbeddedBroker(free_port())
    broker.start()
    pid = broker.process.pid if broker.process else -1
    wait_for_kafka(broker.host, broker.port, 5)
    broker.stop()
    with pytest.raises(BrokerError):
        wait_for_kafka(broker.host, broker.port, 1)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_embedded_broker_refuses_a_taken_port() -> None:
    with EmbeddedBroker(free_port()) as first, pytest.raises(BrokerError, match="already in use"):
        EmbeddedBroker(first.port).start()


def test_broker_command_prints_where_it_listens_and_stops_on_sigterm() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        assert f"127.0.0.1:{port}" in line
        wait_for_kafka("127.0.0.1", port, 5)
        assert partition_count(f"127.0.0.1:{port}", "nothing-here") == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        assert "stopped" in process.stdout.read().decode()
        with pytest.raises(BrokerError):
            wait_for_kafka("127.0.0.1", port, 1)
    finally:
        stop_process(process)
        time.sleep(0)

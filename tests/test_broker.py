"""The embedded broker: starts, answers Kafka, stops by PID; `hookstream broker` does the same from the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from ops.broker import BrokerError, EmbeddedBroker, wait_for_kafka
from ops.process import free_port, stop_process
from tests.support import alive, children, partition_count, wait_for

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


def test_broker_command_stopped_while_the_broker_starts_leaves_no_broker_behind() -> None:
    """The broker runs in its own session (Ctrl-C reaches only hookstream): stopped before the broker answered,
    hookstream must stop it. The broker is frozen (SIGSTOP) until the stop was sent, so it falls in that window.
    Freezing it takes this process noticing it within the ~100 ms it needs to answer: a loaded machine may miss
    that, and the scenario is then run again (three times at most)."""
    for _ in range(3):
        if _stop_during_start():
            return
    raise AssertionError("the broker answered before it could be frozen, three times: the scenario never ran")


def _stop_during_start() -> bool:
    """The scenario above; False if the broker answered before it was frozen (nothing checked)."""
    output = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "broker", "--port", str(free_port())], stdout=output, stderr=output
    )
    frozen: list[int] = []

    def freeze_the_broker() -> bool:
        started = children(process.pid)
        for pid in started:
            os.kill(pid, signal.SIGSTOP)
        frozen.extend(started)
        return bool(started) or process.poll() is not None

    try:
        wait_for(freeze_the_broker, 30, "the broker process", interval=0.01)
        assert frozen, "no broker process started"
        (broker_pid,) = frozen
        output.seek(0)
        if b"listening" in output.read():  # the broker answered first: the stop would not fall in the start
            return False
        process.send_signal(signal.SIGTERM)
        os.kill(broker_pid, signal.SIGCONT)  # to take the stop hookstream sends it
        assert process.wait(30) == 0  # noted during the start, the stop came once the broker answered
        wait_for(lambda: not alive(broker_pid), 15, "the broker gone: it must not outlive the command")
        return True
    finally:
        output.close()
        stop_process(process)
        for pid in frozen:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

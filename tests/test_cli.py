"""The ``hookstream`` commands that talk to Kafka say so when they cannot: exit status 2, a line naming the
brokers, no traceback. (audit's 1 means "an event is missing": a check that never ran must not say that.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ops.process import free_port


@pytest.mark.parametrize("command", ["audit", "replay"])
def test_a_command_that_cannot_reach_kafka_exits_2_with_one_clear_line(command: str) -> None:
    servers = f"127.0.0.1:{free_port()}"  # nothing listens there
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": servers, "LOG_LEVEL": "CRITICAL"}
    done = subprocess.run(
        [sys.executable, "-m", "ops.cli", command], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"hookstream {command}: Kafka at {servers}: KafkaConnectionError" in done.stderr
    assert "Traceback" not in done.stderr
    assert "Unclosed" not in done.stderr  # replay stops the clients it started
    assert "IDEMPOTENCE" not in done.stderr  # the embedded broker's hint is for another failure

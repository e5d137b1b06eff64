"""The Kafka clients' repeated lines are held back (ops/logs.py): an outage must not bury the rest of the log."""

from __future__ import annotations

import logging

from ops.logs import RepeatFilter


def _record(name: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_a_kind_of_line_goes_through_once_a_window_with_the_count_held_back() -> None:
    now = [0.0]
    repeats = RepeatFilter(window=10, clock=lambda: now[0])
    passed = []
    for second in range(25):  # a connection failure, ten times a second for 25 s
        now[0] = float(second)
        for _ in range(10):
            record = _record("aiokafka.conn", "Unable connect to node with id %s: %s", 1, "refused")
            if repeats.filter(record):
                passed.append((second, record.getMessage()))
    assert passed == [
        (0, "Unable connect to node with id 1: refused"),
        (10, "Unable connect to node with id 1: refused (and 99 more like it in the last 10 s)"),
        (20, "Unable connect to node with id 1: refused (and 99 more like it in the last 10 s)"),
    ]


def test_other_kinds_and_other_loggers_are_not_held_back() -> None:
    repeats = RepeatFilter(window=10, clock=lambda: 0.0)
    assert repeats.filter(_record("aiokafka.conn", "Unable connect to node with id %s", 1))
    assert repeats.filter(_record("aiokafka.cluster", "Unable to update metadata"))  # another template
    assert repeats.filter(_record("aiokafka.conn", "Unable connect to node with id %s", 1, level=logging.WARNING))
    for _ in range(3):  # hookstream's own lines, and other libraries', always
        assert repeats.filter(_record("gateway.app", "event %s not acknowledged", "evt_1"))
        assert repeats.filter(_record("uvicorn.error", "Invalid HTTP request received."))


def test_librdkafkas_lines_are_told_apart_by_their_facility() -> None:
    """confluent-kafka logs every line with one template, "%s [%s] %s" (facility, client, message)."""
    repeats = RepeatFilter(window=10, clock=lambda: 0.0)
    fail = ("FAIL", "rdkafka#producer-1", "Connect to ipv4#127.0.0.1:9092 failed: Connection refused")
    down = ("ERROR", "rdkafka#producer-1", "1/1 brokers are down")
    assert repeats.filter(_record("librdkafka", "%s [%s] %s", *fail))
    assert repeats.filter(_record("librdkafka", "%s [%s] %s", *down))
    assert not repeats.filter(_record("librdkafka", "%s [%s] %s", *fail))

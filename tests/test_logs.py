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
    """A kind is the logger, the level and the words: numbers (a node's id, a port, milliseconds) vary within one
    trouble; another error is another kind, though the template is the same."""
    repeats = RepeatFilter(window=10, clock=lambda: 0.0)
    assert repeats.filter(_record("aiokafka.conn", "Unable connect to node with id %s: %s", 1, "refused"))
    assert not repeats.filter(_record("aiokafka.conn", "Unable connect to node with id %s: %s", 2, "refused"))
    assert repeats.filter(_record("aiokafka.conn", "Unable connect to node with id %s: %s", 1, "SSL handshake"))
    assert repeats.filter(_record("aiokafka.cluster", "Unable to update metadata"))
    assert repeats.filter(_record("aiokafka.conn", "Unable connect to node with id %s", 1, level=logging.WARNING))
    for _ in range(3):  # hookstream's own lines, and other libraries', always
        assert repeats.filter(_record("gateway.app", "event %s not acknowledged", "evt_1"))
        assert repeats.filter(_record("uvicorn.error", "Invalid HTTP request received."))


def test_librdkafkas_lines_are_told_apart_by_their_words() -> None:
    """confluent-kafka logs every line with one template, "%s [%s] %s" (facility, client, message)."""
    repeats = RepeatFilter(window=10, clock=lambda: 0.0)
    refused = ("FAIL", "rdkafka#producer-1", "Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after 0ms)")
    again = ("FAIL", "rdkafka#producer-1", "Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after 3ms)")
    tls = ("FAIL", "rdkafka#producer-1", "127.0.0.1:9093: SSL handshake failed: certificate verify failed")
    assert repeats.filter(_record("librdkafka", "%s [%s] %s", *refused))
    assert repeats.filter(_record("librdkafka", "%s [%s] %s", *tls))
    assert not repeats.filter(_record("librdkafka", "%s [%s] %s", *again))


def test_every_handler_gets_one_verdict_and_a_bad_record_does_not_raise() -> None:
    """The root logger may have several handlers, each with the filter: a record is judged once (its message is
    rewritten with the count, which another handler must not take for a new kind). A record whose arguments do
    not fit its template is logging's to report, never an exception in the code that logged."""
    now = [0.0]
    first, second = RepeatFilter(clock=lambda: now[0]), RepeatFilter(clock=lambda: now[0])
    verdicts = []
    for second_ in (0.0, 1.0, 11.0):
        now[0] = second_
        record = _record("aiokafka.conn", "Unable connect to node with id %s", 1)
        verdicts.append((first.filter(record), second.filter(record)))
    assert verdicts == [(True, True), (False, False), (True, True)]
    assert RepeatFilter().filter(_record("aiokafka.conn", "x %s %s", 1)) is True  # not enough arguments

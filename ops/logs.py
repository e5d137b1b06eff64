"""Logging for every hookstream process: one format, and no library allowed to log what must never be logged.

The promise (README, "Security"): no webhook secret, Stripe-Signature, event body or Kafka password in any log
line, at any ``LOG_LEVEL``. hookstream's own log calls name events by id and errors by type. aiokafka is the
library that would break it: at DEBUG it logs every value it produces (``Sending (key=... value=...)``: dead
letters are whole event bodies) and every request it sends, a SASL/PLAIN login included, password in the clear
(both seen in tests/test_security.py). So aiokafka never logs below INFO, whatever ``LOG_LEVEL`` says.
uvicorn needs no floor: even its TRACE logging replaces bodies and headers with placeholders.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable

#: Library loggers never enabled below these levels.
LIBRARY_FLOORS: dict[str, int] = {
    "aiokafka": logging.INFO,  # DEBUG: produced values, request and response structs, SASL/PLAIN passwords
}

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

log = logging.getLogger(__name__)


#: Loggers of the Kafka clients, whose lines repeat many times a second while a broker is away (``RepeatFilter``).
CHATTY = ("aiokafka", "librdkafka", "faust.transport")


def configure_logging(level: str) -> None:
    """The root logger at ``level`` on stderr, library loggers no lower than their floors."""
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr)
    raised = apply_library_floors(logging.getLogger().getEffectiveLevel())
    if raised:
        log.debug("LOG_LEVEL=%s except %s: their debug lines carry event bodies and credentials", level, raised)


def apply_library_floors(level: int) -> str:
    """Set each logger of LIBRARY_FLOORS to the higher of ``level`` and its floor; say which were raised. The root
    logger's handlers get a ``RepeatFilter`` (once each).

    Setting ``level`` itself where it is above the floor keeps those loggers exactly as quiet as the root.
    Called again once Faust has configured a worker's logging (``streams/worker.py``).
    """
    raised = []
    for name, floor in LIBRARY_FLOORS.items():
        logging.getLogger(name).setLevel(max(level, floor))
        if level < floor:
            raised.append(f"{name} at {logging.getLevelName(floor)}")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RepeatFilter) for f in handler.filters):
            handler.addFilter(RepeatFilter())
    return ", ".join(raised)


class RepeatFilter(logging.Filter):
    """Lets one line of each kind of the Kafka clients' through per ``window`` seconds, and says on the next one
    let through how many it held back. A kind is the logger, the level and the message with its numbers taken out:
    a node's id, a port, milliseconds vary from line to line of one trouble, its words do not.

    While a broker is away, aiokafka logged ~90 lines a second (every connection, metadata and fetch failure) and
    librdkafka 20: an outage of minutes buried everything else, and filled log storage. The first line of each kind
    still shows at once, and each ``window`` after that one more with the count, as long as the trouble lasts.
    """

    _NUMBERS = re.compile(r"\d+")

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()  # aiokafka logs from Faust's consumer thread too
        self._seen: dict[tuple[object, ...], tuple[float, int]] = {}  # kind -> (let through at, held since)

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(CHATTY):
            return True
        judged = getattr(record, "held_back", None)  # by this filter on another handler: the same verdict
        if judged is not None:
            return not judged
        try:
            held = self._held(record)
        except Exception:  # a filter must never raise into the code that logs: logging reports bad records itself
            return True
        record.held_back = held is None
        if held is not None and held[0]:
            count, seconds = held
            record.msg = f"{record.getMessage()} (and {count} more like it in the last {seconds:.0f} s)"
            record.args = None
        return held is not None

    def _held(self, record: logging.LogRecord) -> tuple[int, float] | None:
        """None to hold the record back; else how many of its kind were, and over how many seconds."""
        kind = (record.name, record.levelno, self._NUMBERS.sub("#", record.getMessage()))
        now = self._clock()
        with self._lock:
            last = self._seen.get(kind)
            if last is not None and now - last[0] < self._window:
                self._seen[kind] = (last[0], last[1] + 1)
                return None
            self._seen[kind] = (now, 0)
            if len(self._seen) > 1000:  # kinds are few; lines with varying words must not pile up
                self._seen = {kind: self._seen[kind]}
        return (last[1], now - last[0]) if last is not None else (0, 0.0)


def described(error: BaseException) -> str:
    """An error's type and the line that raised it, never its message: a message may quote the event (a handler's
    ``ValueError(f"bad {obj}")``), and no body goes into a log line. The worker keeps the message in the dead
    letter's ``error-message`` header, where the event itself is."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return type(error).__name__
    where = frames[-1]
    return f"{type(error).__name__} at {os.path.basename(where.filename)}:{where.lineno} in {where.name}"


def stack(error: BaseException) -> str:
    """Where ``error`` went through (files, lines, code), without its message: for bugs of our own."""
    return "".join(traceback.format_tb(error.__traceback__)).rstrip()

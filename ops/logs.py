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
import sys
import traceback

#: Library loggers never enabled below these levels.
LIBRARY_FLOORS: dict[str, int] = {
    "aiokafka": logging.INFO,  # DEBUG: produced values, request and response structs, SASL/PLAIN passwords
}

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

log = logging.getLogger(__name__)


def configure_logging(level: str) -> None:
    """The root logger at ``level`` on stderr, library loggers no lower than their floors."""
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr)
    raised = apply_library_floors(logging.getLogger().getEffectiveLevel())
    if raised:
        log.debug("LOG_LEVEL=%s except %s: their debug lines carry event bodies and credentials", level, raised)


def apply_library_floors(level: int) -> str:
    """Set each logger of LIBRARY_FLOORS to the higher of ``level`` and its floor; say which were raised.

    Setting ``level`` itself where it is above the floor keeps those loggers exactly as quiet as the root.
    Called again once Faust has configured a worker's logging (``streams/worker.py``).
    """
    raised = []
    for name, floor in LIBRARY_FLOORS.items():
        logging.getLogger(name).setLevel(max(level, floor))
        if level < floor:
            raised.append(f"{name} at {logging.getLevelName(floor)}")
    return ", ".join(raised)


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

"""Fault injection for the worker tests: the object store fails a write, as a full disk or a broken RocksDB would.

Loaded next to tests.handlers.recording (HOOKSTREAM_HANDLERS=tests.handlers.recording,tests.handlers.failing_store).
It registers no handler: importing it wraps the table writer's ``put`` so that writing the state of an object whose
id starts with ``ch_store_fails`` raises OSError, until the file named by HOOKSTREAM_TEST_FIXED exists.
"""

from __future__ import annotations

from streams.table import TableWriter
from tests.handlers.recording import fixed

_put = TableWriter.put


async def _failing_put(self: TableWriter, key: bytes, value: bytes, partition: int) -> None:
    if key.startswith(b"ch_store_fails") and not fixed():
        raise OSError(28, "No space left on device (injected by tests.handlers.failing_store)")
    await _put(self, key, value, partition)


TableWriter.put = _failing_put  # type: ignore[method-assign]

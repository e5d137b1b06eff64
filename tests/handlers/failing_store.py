"""Fault injection for the worker tests: the object store fails a write, as a full disk or a broken RocksDB would.

Loaded next to tests.handlers.recording (HOOKSTREAM_HANDLERS=tests.handlers.recording,tests.handlers.failing_store).
It registers no handler: importing it wraps the table writer's ``put`` so that writing the state of an object whose
id starts with ``ch_store_fails`` raises OSError, until the file named by HOOKSTREAM_TEST_FIXED exists.
"""

from __future__ import annotations

import os

from streams.table import TableWriter

_fixed_path = os.environ.get("HOOKSTREAM_TEST_FIXED", "")
_put = TableWriter.put


def _fixed() -> bool:
    return bool(_fixed_path) and os.path.exists(_fixed_path)


async def _failing_put(self: TableWriter, key: bytes, value: bytes, partition: int) -> None:
    if key.startswith(b"ch_store_fails") and not _fixed():
        raise OSError(28, "No space left on device (injected by tests.handlers.failing_store)")
    await _put(self, key, value, partition)


TableWriter.put = _failing_put  # type: ignore[method-assign]

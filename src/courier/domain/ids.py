"""Time-ordered message ids: 48-bit milliseconds then 80 bits, as 32 lowercase hex digits.

Hex sorts like the number it spells, so ids sort by creation time; within one millisecond
the low bits count up, so ids from one process are strictly increasing.
"""

from __future__ import annotations

import os
import time

_LOW = (1 << 80) - 1


class IdGenerator:
    """Not thread-safe on purpose: ids are made on the event loop only."""

    def __init__(self) -> None:
        self._last_ms = 0
        self._low = 0

    def new(self, now_ms: int | None = None) -> str:
        ms = int(time.time() * 1000) if now_ms is None else now_ms
        if ms <= self._last_ms:
            ms = self._last_ms
            self._low = (self._low + 1) & _LOW
        else:
            self._last_ms = ms
            self._low = int.from_bytes(os.urandom(10), "big") >> 8  # leave room to count up
        return f"{ms:012x}{self._low:020x}"

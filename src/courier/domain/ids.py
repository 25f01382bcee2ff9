"""Time-ordered message ids: 48-bit milliseconds then 80 bits, as 32 lowercase hex digits.

Hex sorts like the number it spells, so ids sort by creation time; within one millisecond
the low bits count up, so ids from one process are strictly increasing.
"""

from __future__ import annotations

import random
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
            # Not os.urandom: ids need no secrecy, and a syscall here would hand the GIL to
            # the store's writer thread in the middle of the hot path.
            self._low = random.getrandbits(72)  # leaves room to count up within the ms
        return f"{ms:012x}{self._low:020x}"

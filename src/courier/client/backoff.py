"""Retry and reconnect delays: exponential growth with "full jitter".

A server restart cuts every client off in the same instant. If they all waited the same delay
they would all come back in the same instant too, and a half-jittered delay (ceiling/2 plus a
random half) still packs them into the upper half of each window. Full jitter draws each delay
uniformly from [0, min(cap, base * 2**attempt)], so the clients that return spread evenly over
the whole window and the server sees a steady trickle instead of a wall.
"""

from __future__ import annotations

import random

BASE_S = 0.5  # the first retry waits up to this long
CAP_S = 10.0  # no wait is ever longer
STABLE_AFTER_S = 10.0  # a connection that lived this long starts the schedule over


def ceiling(attempt: int, base: float = BASE_S, cap: float = CAP_S) -> float:
    """The longest wait before retry number ``attempt`` (0 for the first retry)."""
    return min(cap, base * 2.0 ** min(max(attempt, 0), 30))


def backoff(
    attempt: int,
    base: float = BASE_S,
    cap: float = CAP_S,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt``: uniform in [0, ceiling(attempt)]."""
    return (rng or _rng).uniform(0.0, ceiling(attempt, base, cap))


_rng = random.Random()

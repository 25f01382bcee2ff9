"""The reconnect and retry schedule: exponential ceilings, full jitter, a cap, and a spread
that keeps clients cut off together from coming back together."""

from __future__ import annotations

import random
import statistics

from courier.client.backoff import BASE_S, CAP_S, backoff, ceiling


def test_ceilings_double_from_the_base_up_to_the_cap() -> None:
    assert [ceiling(a) for a in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert ceiling(10_000) == CAP_S
    assert ceiling(-3) == BASE_S
    assert ceiling(3, base=0.25, cap=15.0) == 2.0


def test_every_delay_lies_between_zero_and_its_ceiling() -> None:
    rng = random.Random(20240601)
    for attempt in range(40):
        top = ceiling(attempt)
        delays = [backoff(attempt, rng=rng) for _ in range(500)]
        assert all(0.0 <= d <= top for d in delays), attempt


def test_delays_fill_the_whole_window() -> None:
    """Full jitter: the delays of many clients spread evenly over [0, ceiling], not into
    its upper half (where ceiling/2 + jitter would put them)."""
    rng = random.Random(7)
    for attempt in (0, 3, 8):
        top = ceiling(attempt)
        delays = [backoff(attempt, rng=rng) for _ in range(10_000)]
        assert min(delays) < 0.01 * top
        assert max(delays) > 0.99 * top
        assert abs(statistics.mean(delays) - top / 2) < 0.02 * top
        below_half = sum(d < top / 2 for d in delays) / len(delays)
        assert 0.47 < below_half < 0.53
        # Ten equal slices of the window each get about a tenth of the clients.
        slices = [0] * 10
        for d in delays:
            slices[min(9, int(d / top * 10))] += 1
        assert all(850 < n < 1150 for n in slices), slices


def test_clients_cut_off_together_do_not_return_together() -> None:
    """10,000 clients dropped at the same instant: their first retries land in thousands of
    different milliseconds, and no millisecond gets more than a few dozen of them."""
    rng = random.Random(99)
    millis = [int(backoff(0, rng=rng) * 1000) for _ in range(10_000)]
    per_ms = [millis.count(ms) for ms in set(millis)]
    assert len(per_ms) >= 490  # of the 501 possible milliseconds in [0, 500]
    assert max(per_ms) < 50


def test_a_seeded_schedule_is_reproducible() -> None:
    first = [backoff(a, rng=random.Random(5)) for a in range(12)]
    again = [backoff(a, rng=random.Random(5)) for a in range(12)]
    assert first == again
    other = [backoff(a, rng=random.Random(6)) for a in range(12)]
    assert first != other

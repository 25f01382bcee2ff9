"""Throttles for registration and login, the two calls anyone can make without a token.

- Per source address: registrations and login attempts (token buckets).
- Per username: failed logins. A guesser spread over many addresses gets a few tries a
  minute per account. The account's owner is not locked out by that: an address that logged
  in to the account before is not held to the per-username bucket (only to its own).

Memory follows the active keys: idle (full) buckets are pruned, and the known addresses
are a bounded LRU. A restart forgets everything, which only ever loosens the limits.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import msgspec

from courier.domain.errors import rate_limited
from courier.service.ratelimit import KeyedLimiter

KNOWN_MAX = 100_000  # (username, address) pairs remembered as the account's own
KNOWN_FOR = 30 * 86400.0  # seconds an address stays known after a successful login


class ThrottleSettings(msgspec.Struct, frozen=True):
    """Rates are per second; a rate of 0 turns that throttle off (defaults: config.py)."""

    register_rate_per_address: float = 0.0
    register_burst_per_address: int = 1
    login_rate_per_address: float = 0.0
    login_burst_per_address: int = 1
    login_failure_rate_per_user: float = 0.0
    login_failure_burst_per_user: int = 1

    @classmethod
    def of(cls, settings: object) -> ThrottleSettings:
        """The fields of the same names from the server's settings."""
        return cls(**{name: getattr(settings, name) for name in cls.__struct_fields__})


def _limiter(rate: float, burst: int) -> KeyedLimiter | None:
    return KeyedLimiter(rate, burst) if rate > 0 else None


class AuthThrottle:
    def __init__(self, settings: ThrottleSettings | None = None) -> None:
        s = settings or ThrottleSettings()  # none: no throttling
        self._register = _limiter(s.register_rate_per_address, s.register_burst_per_address)
        self._login = _limiter(s.login_rate_per_address, s.login_burst_per_address)
        self._failures = _limiter(s.login_failure_rate_per_user, s.login_failure_burst_per_user)
        self._known: OrderedDict[tuple[str, str], float] = OrderedDict()

    def register(self, address: str) -> None:
        """Raises 429 rate_limited when this address registers too often."""
        if self._register is not None and address:
            self._register.check(address)

    def login(self, address: str, username: str) -> bool:
        """Before the password is checked: raises 429 when this address tries too often, or
        when this account failed too often and the address is not one it logged in from.

        The attempt takes its token of the account's failure budget up front, so guesses
        made at the same moment cannot all pass the check before any of them has failed;
        a success gives it back (`succeeded`). True when a token was taken."""
        if self._login is not None and address:
            self._login.check(address)
        if self._failures is None or self._is_known(username, address):
            return False
        wait = self._failures.take(username)
        if wait:
            raise rate_limited(wait)
        return True

    def succeeded(self, address: str, username: str, took: bool) -> None:
        if took and self._failures is not None:
            self._failures.give_back(username)
        if not address:
            return
        key = (username, address)
        self._known[key] = time.monotonic() + KNOWN_FOR
        self._known.move_to_end(key)
        while len(self._known) > KNOWN_MAX:
            self._known.popitem(last=False)

    def _is_known(self, username: str, address: str) -> bool:
        until = self._known.get((username, address))
        return until is not None and until > time.monotonic()

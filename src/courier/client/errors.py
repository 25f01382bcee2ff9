"""Errors raised by the client SDK, typed so callers can tell "give up" from "try again"."""

from __future__ import annotations

# Codes that describe a passing condition of the server rather than a fault of the request.
RETRYABLE_CODES = frozenset(
    {
        "rate_limited",
        "unavailable",
        "backend_unavailable",
        "overloaded",
        "internal",
        "internal_error",
        "timeout",
        "shutting_down",
        "store_unavailable",
    }
)


class CourierError(Exception):
    """An error answered by the server: ``code`` is the wire code, ``message`` its sentence."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status

    @property
    def retryable(self) -> bool:
        """True when repeating the same request later may succeed."""
        if self.code in RETRYABLE_CODES or self.code.endswith("_unavailable"):
            return True
        return self.status is not None and self.status >= 500


class RateLimited(CourierError):
    """The server asked us to slow down; ``retry_after`` is its hint in seconds, if any."""

    def __init__(self, message: str, retry_after: float | None = None, status: int = 429) -> None:
        super().__init__("rate_limited", message, status)
        self.retry_after = retry_after


class AuthError(CourierError):
    """The token is missing, invalid or revoked: reconnecting will not help."""


class ConnectionLost(Exception):
    """The connection dropped before the server answered; the request may be retried."""


def error_from(code: str, message: str, status: int | None = None) -> CourierError:
    """Build the most specific error class for a wire error."""
    if code == "rate_limited":
        return RateLimited(message, status=status or 429)
    if status == 401 or code in ("unauthorized", "invalid_token", "auth_failed"):
        return AuthError(code, message, status)
    return CourierError(code, message, status)

"""The one error type every layer raises; the transport maps it onto the wire."""

from __future__ import annotations


class CourierError(Exception):
    """A failure with a stable snake_case code and an HTTP status.

    The code and message go to the client verbatim (PROTOCOL.md error shape), so the
    message must be a human sentence that leaks nothing internal.
    """

    def __init__(
        self, code: str, message: str, status: int = 400, *, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"CourierError({self.code!r}, {self.message!r}, {self.status})"


def bad_request(message: str) -> CourierError:
    return CourierError("bad_request", message, 400)


def unknown_user(username: str) -> CourierError:
    return CourierError("unknown_user", f"There is no user named {username!r}.", 404)


def unauthorized(message: str = "A valid bearer token is required.") -> CourierError:
    return CourierError("unauthorized", message, 401)


def rate_limited(retry_after: float) -> CourierError:
    wait = max(retry_after, 0.001)
    return CourierError(
        "rate_limited", f"Too many requests; retry in {wait:.3f} s.", 429, retry_after=wait
    )


def too_many_connections(limit: int) -> CourierError:
    return CourierError(
        "too_many_connections", f"This user already holds {limit} live connections.", 429
    )


def store_unavailable() -> CourierError:
    return CourierError("store_unavailable", "The message store is unavailable; retry.", 503)

"""aiohttp's per-connection protocol, with the deadlines and the error shape Courier needs.

aiohttp has no deadline for a request's head: a client that sends `GET / HTTP/1.1\\r\\n`, or
one header byte every few seconds, holds its socket until the keep-alive timeout (an hour by
default). `GuardedHandler` gives every request head `head_timeout` seconds from its first
byte; the middleware below tells it when a request is being served (a long-poll or a
WebSocket may then take as long as they need) and when the connection is idle again, where
aiohttp's keep-alive timeout takes over. Bodies have their own deadline where they are read
(`HttpApi.decode`).

Malformed HTTP (bad framing, a NUL in a header) is answered in the contract's error shape,
never echoing the bytes it got, and logged as one line instead of a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from courier.domain.errors import CourierError
from courier.transport.errors import error_body, error_response

log = logging.getLogger(__name__)

# Every response: no sniffing, no framing, no referrer, no version in `Server`. The page may
# load only its own scripts and styles, and talk only to its own origin.
SECURITY_HEADERS = {
    "Server": "Courier",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; worker-src 'self'; manifest-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "Cross-Origin-Opener-Policy": "same-origin",
}

_LATE_BODY = error_body("request_timeout", "The request did not arrive in time.")
# Written straight to the socket (no request was parsed), with the same headers as any answer.
REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n"
    % len(_LATE_BODY)
    + b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items())
    + b"\r\n"
    + _LATE_BODY
)


_MALFORMED = {
    400: ("bad_request", "The HTTP request is malformed."),
    413: ("payload_too_large", "The request is too large."),
    431: ("headers_too_large", "The request headers are too large."),
}


class GuardedHandler(RequestHandler):
    __slots__ = ("_busy", "_head_timeout", "_head_timer", "_release")

    def __init__(
        self, manager: Any, *, head_timeout: float, release: Callable[[], None], **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout = head_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._busy = 0  # requests being served (their heads arrived)
        self._release = release

    def data_received(self, data: bytes) -> None:
        if not self._busy and self._head_timer is None:
            self._head_timer = asyncio.get_running_loop().call_later(
                self._head_timeout, self._head_late
            )
        super().data_received(data)

    def request_started(self) -> None:
        self._busy += 1
        self._stop_timer()

    def request_finished(self) -> None:
        self._busy -= 1

    def _head_late(self) -> None:
        self._head_timer = None
        if self._busy:
            return
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(REQUEST_TIMEOUT)
        self.force_close()

    def _stop_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_timer()
        release, self._release = self._release, _nothing
        release()
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse or serve, in the error shape."""
        if status >= 500:
            log.error("failed to serve a request from %s", request.remote, exc_info=exc)
        else:
            log.info("malformed HTTP from %s: %d %s", request.remote, status, type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already under way")
        if isinstance(exc, LineTooLong):  # a header line, or the request line, past the limit
            status = 431
        code, text = _MALFORMED.get(status, ("internal_error", "The server failed to answer."))
        response = error_response(CourierError(code, text, status if status >= 400 else 400))
        response.headers.update(SECURITY_HEADERS)
        response.force_close()
        return response


def _nothing() -> None:
    return None


def guard_middleware() -> Middleware:
    """Marks the span in which a request is served, for `GuardedHandler`'s head deadline."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        protocol = request.protocol
        if not isinstance(protocol, GuardedHandler):
            return await handler(request)
        protocol.request_started()
        try:
            return await handler(request)
        finally:
            protocol.request_finished()

    return middleware


def body_limit(max_bytes: int) -> tuple[Middleware, Callable[[web.Request], Any]]:
    """A body declared larger than `max_bytes` is refused before any of it is read: 413,
    then the connection closes. The middleware covers plain requests; the expect handler
    (for every route) answers `Expect: 100-continue` with that 413 instead of inviting the
    body, and otherwise with 100 Continue as aiohttp would."""

    def too_large(request: web.Request) -> bool:
        return request.content_length is not None and request.content_length > max_bytes

    def refuse() -> web.Response:
        text = f"The request body is over {max_bytes} bytes."
        response = error_response(CourierError("payload_too_large", text, 413))
        response.force_close()
        return response

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if too_large(request):
            return refuse()
        return await handler(request)

    async def expect(request: web.Request) -> web.StreamResponse | None:
        if too_large(request):
            return refuse()
        if request.version != (1, 1):
            return None
        if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
            response = error_response(
                CourierError("expectation_failed", "Only Expect: 100-continue is known.", 417)
            )
            response.force_close()
            return response
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer itself has not started
        return None

    return middleware, expect

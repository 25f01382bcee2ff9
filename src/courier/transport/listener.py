"""The one listening port. Each new connection is looked at once: if its first request starts
`GET /v1/ws` it goes to the lean WebSocket front, otherwise to aiohttp (the HTTP API, long-poll,
the web app, and WebSocket upgrades on keep-alive connections). A connection that says nothing
for `timeout` seconds is dropped before it reaches either.

Every socket is admitted first (`Admission`: the caps in all and per source address); the
front that takes it over releases it when it closes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from courier.transport.admission import Admission, peer_address

_PREFIX = b"GET /v1/ws"
_DECIDE = len(_PREFIX) + 1  # and the byte after the path: " " or "?"


Front = Callable[[str], asyncio.BaseProtocol]  # called with the admitted source address;
# the protocol it returns calls `Admission.release(address)` once its connection is lost


class PortSniffer(asyncio.Protocol):
    __slots__ = (
        "_address",
        "_admission",
        "_buf",
        "_http",
        "_timeout",
        "_timer",
        "_transport",
        "_ws",
    )

    def __init__(self, http: Front, ws: Front, timeout: float, admission: Admission) -> None:
        self._http = http
        self._ws = ws
        self._timeout = timeout
        self._admission = admission
        self._address: str | None = None  # set while this socket is counted
        self._buf = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        address = peer_address(transport)
        refusal = self._admission.admit(address)
        if refusal is not None:
            self._transport.write(refusal)
            self._transport.close()
            return
        self._address = address
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._silent)

    def _release(self) -> None:
        if self._address is not None:
            self._admission.release(self._address)
            self._address = None

    def _silent(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._address is None:
            return  # refused
        buf = self._buf + data
        if len(buf) < _DECIDE and _PREFIX.startswith(buf[: len(_PREFIX)]):
            self._buf = buf  # still could be either
            return
        lean = buf.startswith(_PREFIX) and buf[len(_PREFIX) : _DECIDE] in (b" ", b"?")
        address = self._address
        protocol = (self._ws if lean else self._http)(address)
        transport = self._transport
        assert transport is not None
        self._buf = b""
        self._address = None  # the front releases it now
        self._transport = None
        self._stop_timer()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        cast(asyncio.Protocol, protocol).data_received(buf)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Only for a socket that closed before a front took it over."""
        self._transport = None
        self._stop_timer()
        self._release()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

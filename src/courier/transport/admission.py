"""Who may open a connection: caps on open sockets in all and per source address.

Every accepted socket is counted here from its first moment until it closes, whichever front
serves it. The total cap keeps descriptors in reserve for the store's files and the broker,
so a flood of sockets can never make the server unable to open what it needs; the
per-address cap keeps one client from taking the whole budget. Addresses of trusted proxies
are not capped (everything behind them shares their address; cap at the proxy instead).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable, Mapping

from courier.transport.errors import error_body

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Descriptors kept for everything that is not a client socket: the store's table files (at
# most 512 on RocksDB), its logs, the broker's and cache's connections, the metrics listener.
FD_RESERVE = 768


def parse_networks(text: str) -> tuple[Network, ...]:
    """ "10.0.0.1, 192.168.0.0/16, ::1" -> networks; raises ValueError on a bad entry."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return tuple(ipaddress.ip_network(p, strict=False) for p in parts)


def in_networks(address: str, networks: Iterable[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(remote: str, headers: Mapping[str, str], trusted: tuple[Network, ...]) -> str:
    """The address a request comes from: its peer's, unless the peer is a trusted proxy, in
    which case the nearest untrusted hop of X-Forwarded-For (or X-Real-IP) is."""
    if not trusted or not in_networks(remote, trusted):
        return remote
    forwarded = headers.get("X-Forwarded-For", "")
    for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
        if not in_networks(hop, trusted):
            return hop
    return headers.get("X-Real-IP", "").strip() or remote


def peer_address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return ""  # a Unix socket


def _refusal(status: int, reason: str, code: str, message: str) -> bytes:
    body = error_body(code, message)
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 5\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


TOO_MANY_TOTAL = _refusal(
    503, "Service Unavailable", "server_full", "The server holds all the connections it can."
)
TOO_MANY_FROM_ADDRESS = _refusal(
    429,
    "Too Many Requests",
    "too_many_connections",
    "This address holds all the connections it may.",
)


class Admission:
    def __init__(
        self, total_max: int, per_address_max: int, exempt: tuple[Network, ...] = ()
    ) -> None:
        self.total_max = total_max
        self.per_address_max = per_address_max  # 0 = no cap
        self._exempt = exempt
        self._exempt_seen: dict[str, bool] = {}
        self.total = 0
        self._by_address: dict[str, int] = {}

    def admit(self, address: str) -> bytes | None:
        """Count a new socket; None when admitted, else the HTTP refusal to write."""
        if self.total >= self.total_max:
            return TOO_MANY_TOTAL
        if self.per_address_max and address and not self._is_exempt(address):
            held = self._by_address.get(address, 0)
            if held >= self.per_address_max:
                return TOO_MANY_FROM_ADDRESS
            self._by_address[address] = held + 1
        self.total += 1
        return None

    def release(self, address: str) -> None:
        self.total -= 1
        held = self._by_address.get(address)
        if held is not None:
            if held <= 1:
                del self._by_address[address]
            else:
                self._by_address[address] = held - 1

    def held_by(self, address: str) -> int:
        return self._by_address.get(address, 0)

    def _is_exempt(self, address: str) -> bool:
        if not self._exempt:
            return False
        known = self._exempt_seen.get(address)
        if known is None:
            if len(self._exempt_seen) > 10_000:
                self._exempt_seen.clear()
            known = self._exempt_seen[address] = in_networks(address, self._exempt)
        return known

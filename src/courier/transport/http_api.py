"""HTTP routes of PROTOCOL.md. Parsing and mapping only: every rule lives in the service."""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

import msgspec
from aiohttp import web

from courier.domain.errors import CourierError, bad_request, unauthorized
from courier.domain.groups import is_group
from courier.domain.ops import Conversation
from courier.metrics import Metrics
from courier.service.accounts import Accounts, Session
from courier.service.delivery import EVENTS_LIMIT_DEFAULT, HISTORY_LIMIT_DEFAULT, Delivery
from courier.service.registry import Registry
from courier.transport import wire
from courier.transport.admission import Network, client_address
from courier.transport.longpoll import LongPollWaiter

T = TypeVar("T")
JSON = "application/json"
_enc = msgspec.json.encode


class Backend(Protocol):
    @property
    def healthy(self) -> bool: ...


def json_response(payload: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=_enc(payload), content_type=JSON)


def raw_json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, content_type=JSON)


_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def decoder_for(kind: type[T]) -> msgspec.json.Decoder[T]:
    found = _decoders.get(kind)
    if found is None:
        found = _decoders[kind] = msgspec.json.Decoder(kind)
    return found


async def decode_body(request: web.Request, kind: type[T], seconds: float) -> T:
    """A JSON body: declared as JSON (so no cross-site form can post one), arriving within
    `seconds`, decoded and validated in one step."""
    if request.content_type != JSON:
        raise CourierError(
            "unsupported_media_type", "The body must be JSON (Content-Type: application/json).", 415
        )
    try:
        async with asyncio.timeout(seconds):
            body = await request.read()
    except TimeoutError:
        late = "The request body did not arrive in time."
        raise CourierError("request_timeout", late, 408) from None
    try:
        return wire.decode(decoder_for(kind), body)
    except msgspec.DecodeError as exc:
        raise bad_request(wire.describe(exc)) from None


def int_param(request: web.Request, name: str, default: int | None) -> int | None:
    return parse_int(request.query.get(name), name, default)


# Query numbers as JSON writes them, in ASCII: Python's int() and float() would also take
# " 5", "1_0", "٣" and "inf", which no description of an integer or a number allows.
_INT = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def parse_int(raw: str | None, name: str, default: int | None) -> int | None:
    if raw is None or raw == "":
        return default
    if not _INT.fullmatch(raw):
        raise bad_request(f"{name} must be an integer.")
    # Bounded before int(): a number of thousands of digits is refused, not converted.
    if len(raw.lstrip("+-").lstrip("0")) > 19 or not -(2**62) <= (value := int(raw)) <= 2**62:
        raise bad_request(f"{name} is out of range.")
    return value


def limit_param(request: web.Request, default: int) -> int:
    """`limit` has no upper bound on the wire: any value above the cap is served as the cap
    (the service clamps), however many digits it has."""
    raw = request.query.get("limit")
    if raw is None or raw == "":
        return default
    if not _INT.fullmatch(raw):
        raise bad_request("limit must be an integer.")
    digits = raw.lstrip("+-").lstrip("0")
    value = int(digits or "0") if len(digits) <= 18 else 10**18
    return -value if raw.startswith("-") else value


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def events_body(rows: list[tuple[int, bytes]], last_seq: int, more: bool) -> bytes:
    """Assembled from the stored bytes: events are never decoded on the way out."""
    events = b",".join(data for _seq, data in rows)
    tail = b"true" if more else b"false"
    return b'{"events":[' + events + b'],"last_seq":%d,"more":%s}' % (last_seq, tail)


def conversations_body(rows: list[Conversation], names: Mapping[str, str]) -> bytes:
    """A peer's conversation names the peer; a group's names the group and its name."""
    items = [
        (
            b'{"group":' + _enc(c.peer) + b',"name":' + _enc(names.get(c.peer, ""))
            if is_group(c.peer)
            else b'{"peer":' + _enc(c.peer)
        )
        + b',"last":'
        + c.last
        + b',"unread":%d}' % c.unread
        for c in rows
    ]
    return b'{"conversations":[' + b",".join(items) + b"]}"


class HttpApi:
    def __init__(
        self,
        accounts: Accounts,
        delivery: Delivery,
        registry: Registry,
        backends: Mapping[str, Backend],
        metrics: Metrics,
        longpoll_max_wait: float,
        *,
        body_timeout: float = 30.0,
        trusted_proxies: tuple[Network, ...] = (),
        metrics_token: str = "",
    ) -> None:
        self.accounts = accounts
        self.delivery = delivery
        self.registry = registry
        self.backends = backends  # "store" is essential; the others degrade gracefully
        self.metrics = metrics
        self.longpoll_max_wait = longpoll_max_wait
        self.body_timeout = body_timeout
        self.trusted_proxies = trusted_proxies
        self.metrics_token = metrics_token

    async def decode(self, request: web.Request, kind: type[T]) -> T:
        return await decode_body(request, kind, self.body_timeout)

    def address(self, request: web.Request) -> str:
        return client_address(request.remote or "", request.headers, self.trusted_proxies)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/users", self.register),
            web.post("/v1/sessions", self.login),
            web.get("/v1/sessions", self.list_sessions),
            web.delete("/v1/sessions/current", self.logout),
            web.delete("/v1/sessions/{id}", self.end_session),
            web.post("/v1/messages", self.send),
            web.get("/v1/events", self.events),
            web.post("/v1/ack", self.ack),
            web.post("/v1/read", self.read),
            web.get("/v1/conversations", self.conversations),
            web.get("/v1/conversations/{peer}/messages", self.history),
            web.get("/healthz", self.healthz),
            web.get("/metrics", self.metrics_guarded),
        ]

    async def session(self, request: web.Request) -> Session:
        token = bearer(request)
        if token is None:
            raise unauthorized()
        return await self.accounts.authenticate(token)

    async def register(self, request: web.Request) -> web.Response:
        body = await self.decode(request, wire.Credentials)
        await self.accounts.register(body.username, body.password, self.address(request))
        return json_response({"username": body.username}, 201)

    async def login(self, request: web.Request) -> web.Response:
        body = await self.decode(request, wire.LoginBody)
        agent = request.headers.get("User-Agent", "")
        token = await self.accounts.login(
            body.username, body.password, self.address(request), user_agent=agent
        )
        return json_response({"token": token, "username": body.username}, 201)

    async def logout(self, request: web.Request) -> web.Response:
        await self.accounts.logout(await self.session(request))
        return web.Response(status=204)

    async def list_sessions(self, request: web.Request) -> web.Response:
        sessions = await self.accounts.sessions(await self.session(request))
        return json_response({"sessions": sessions})

    async def end_session(self, request: web.Request) -> web.Response:
        session = await self.session(request)
        session_id = request.match_info["id"]
        if not wire.SESSION_ID.fullmatch(session_id):
            raise bad_request("A session id is 16 hexadecimal digits (0-9, a-f).")
        await self.accounts.end_session(session, session_id)
        return web.Response(status=204)

    async def send(self, request: web.Request) -> web.Response:
        session = await self.session(request)
        body = await self.decode(request, wire.SendBody)
        result = await self.delivery.send(
            session, body.to, body.body, body.client_id, group=body.group
        )
        answer = {
            "id": result.id,
            "seq": result.seq,
            "ts": result.ts,
            "client_id": result.client_id,
        }
        return json_response(answer, 200 if result.duplicate else 201)

    async def events(self, request: web.Request) -> web.Response:
        session = await self.session(request)
        after = int_param(request, "after", 0) or 0
        limit = limit_param(request, EVENTS_LIMIT_DEFAULT)
        wait = _wait_param(request, self.longpoll_max_wait)
        rows, more = await self.delivery.events(session, after, limit)
        if not rows and wait > 0:
            waiter = LongPollWaiter(session.username, session.token_hash)
            self.registry.add(waiter)
            self.metrics.longpolls.inc()
            try:
                # Registered first, then read again: an event committed in between is seen.
                rows, more = await self.delivery.events(session, after, limit)
                if not rows:
                    await waiter.wait(wait)
                    # A logout while the request was held ends it like any other request.
                    session = await self.session(request)
                    rows, more = await self.delivery.events(session, after, limit)
            finally:
                self.registry.remove(waiter)
                self.metrics.longpolls.dec()
        last_seq = rows[-1][0] if rows else after
        return raw_json(events_body(rows, last_seq, more))

    async def ack(self, request: web.Request) -> web.Response:
        session = await self.session(request)
        body = await self.decode(request, wire.AckBody)
        await self.delivery.ack(session, body.seq)
        return web.Response(status=204)

    async def read(self, request: web.Request) -> web.Response:
        session = await self.session(request)
        body = await self.decode(request, wire.ReadBody)
        await self.delivery.read(session, body.peer, body.seq, body.group)
        return web.Response(status=204)

    async def conversations(self, request: web.Request) -> web.Response:
        session = await self.session(request)
        limit = limit_param(request, HISTORY_LIMIT_DEFAULT)
        rows = await self.delivery.conversations(session, limit)
        return raw_json(conversations_body(rows, await self.delivery.group_names(rows)))

    async def history(self, request: web.Request) -> web.Response:
        session = await self.session(request)
        peer = request.match_info["peer"]
        before = int_param(request, "before", None)
        limit = limit_param(request, HISTORY_LIMIT_DEFAULT)
        rows, next_before = await self.delivery.history(session, peer, before, limit)
        cursor = b"null" if next_before is None else b"%d" % next_before
        messages = b",".join(data for _seq, data in rows)
        return raw_json(b'{"messages":[' + messages + b'],"next_before":' + cursor + b"}")

    def _health(self) -> dict[str, bool]:
        health = {name: backend.healthy for name, backend in self.backends.items()}
        for name, up in health.items():
            self.metrics.backend_up.labels(name).set(1 if up else 0)
        return health

    async def healthz(self, request: web.Request) -> web.Response:
        """200 while the store can serve (sends are stored and caught up by seq even with
        the broker or cache down: "degraded"); 503 when the store is down."""
        health = self._health()
        store_ok = health.get("store", False)
        status = "ok" if all(health.values()) else ("degraded" if store_ok else "down")
        return json_response({"status": status, **health}, 200 if store_ok else 503)

    async def metrics_guarded(self, request: web.Request) -> web.Response:
        """/metrics on the public port: only with `metrics_token` set and presented (the
        metrics listener, loopback by default, serves it without one)."""
        token = bearer(request)
        if not self.metrics_token:
            raise CourierError("not_found", "There is nothing at this address.", 404)
        if token is None or not hmac.compare_digest(token, self.metrics_token):
            raise unauthorized("The metrics token is required.")
        return await self.metrics_text(request)

    async def metrics_text(self, request: web.Request) -> web.Response:
        self._health()
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"}
        )


def _wait_param(request: web.Request, cap: float) -> float:
    raw = request.query.get("wait")
    if raw is None or raw == "":
        return 0.0
    if not _NUMBER.fullmatch(raw):
        raise bad_request("wait must be a number of seconds.")
    wait = float(raw)  # a huge one is inf: served as the cap, like any value above it
    if wait < 0:
        raise bad_request("wait must not be negative.")
    return min(wait, cap)

"""The REST half of the protocol: one method per endpoint, errors mapped to typed exceptions."""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import msgspec

from courier.client.errors import AuthError, CourierError, RateLimited, error_from
from courier.client.events import (
    BlockList,
    Conversation,
    ErrorBody,
    EventPage,
    Group,
    GroupList,
    HistoryPage,
    Profile,
    ProfileList,
    RawConversationList,
    RawEventPage,
    RawHistoryPage,
    Sent,
    Session,
    conversation_list,
    event_page,
    history_page,
)

T = TypeVar("T")

_sent_decoder = msgspec.json.Decoder(Sent)


class HttpApi:
    """Thin typed wrapper over the HTTP endpoints; holds no state besides the token."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str | None) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.token = token

    def _headers(self, auth: bool) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if auth:
            if not self.token:
                raise AuthError("unauthorized", "not logged in", 401)
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        auth: bool = True,
        seconds: float = 30.0,
    ) -> tuple[int, bytes]:
        data = None if json is None else msgspec.json.encode(json)
        headers = self._headers(auth)
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self.session.request(
            method,
            self.base_url + path,
            data=data,
            params=params,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=seconds),
        ) as response:
            body = await response.read()
            if response.status >= 400:
                raise _error(response.status, body, response.headers.get("Retry-After"))
            return response.status, body

    async def _get(self, path: str, into: type[T], **kwargs: Any) -> T:
        _, body = await self._call("GET", path, **kwargs)
        return msgspec.json.decode(body, type=into)

    async def register(self, username: str, password: str) -> None:
        await self._call(
            "POST", "/v1/users", json={"username": username, "password": password}, auth=False
        )

    async def login(self, username: str, password: str) -> Session:
        _, body = await self._call(
            "POST", "/v1/sessions", json={"username": username, "password": password}, auth=False
        )
        return msgspec.json.decode(body, type=Session)

    async def logout(self) -> None:
        await self._call("DELETE", "/v1/sessions/current")

    async def send(
        self, to: str | None, body: str, client_id: str, group: str | None = None
    ) -> Sent:
        target = {"group": group} if group is not None else {"to": to}
        _, answer = await self._call(
            "POST", "/v1/messages", json={**target, "body": body, "client_id": client_id}
        )
        return _sent_decoder.decode(answer)

    async def events(self, after: int, wait: float = 0, limit: int = 100) -> EventPage:
        params = {"after": str(after), "wait": str(int(wait)), "limit": str(limit)}
        raw = await self._get("/v1/events", RawEventPage, params=params, seconds=wait + 30.0)
        return event_page(raw)

    async def ack(self, seq: int) -> None:
        await self._call("POST", "/v1/ack", json={"seq": seq})

    async def read(self, peer: str | None, seq: int, group: str | None = None) -> None:
        target = {"group": group} if group is not None else {"peer": peer}
        await self._call("POST", "/v1/read", json={**target, "seq": seq})

    async def conversations(self) -> list[Conversation]:
        return conversation_list(await self._get("/v1/conversations", RawConversationList))

    async def history(self, peer: str, before: int | None = None, limit: int = 50) -> HistoryPage:
        path = f"/v1/conversations/{quote(peer, safe='')}/messages"
        return await self._page(path, before, limit)

    async def group_history(
        self, gid: str, before: int | None = None, limit: int = 50
    ) -> HistoryPage:
        return await self._page(f"/v1/groups/{quote(gid, safe='')}/messages", before, limit)

    async def _page(self, path: str, before: int | None, limit: int) -> HistoryPage:
        params = {"limit": str(limit)}
        if before is not None:
            params["before"] = str(before)
        return history_page(await self._get(path, RawHistoryPage, params=params))

    # -- profiles ------------------------------------------------------------------------------
    async def me(self) -> Profile:
        return await self._get("/v1/me", Profile)

    async def set_display_name(self, display_name: str) -> Profile:
        _, body = await self._call("PATCH", "/v1/me", json={"display_name": display_name})
        return msgspec.json.decode(body, type=Profile)

    async def search_users(self, q: str, limit: int = 10) -> list[Profile]:
        params = {"q": q, "limit": str(limit)}
        return (await self._get("/v1/users", ProfileList, params=params)).users

    async def block(self, username: str) -> None:
        await self._call("PUT", f"/v1/blocks/{quote(username, safe='')}")

    async def unblock(self, username: str) -> None:
        await self._call("DELETE", f"/v1/blocks/{quote(username, safe='')}")

    async def blocks(self) -> list[str]:
        return (await self._get("/v1/blocks", BlockList)).blocks

    # -- groups --------------------------------------------------------------------------------
    async def create_group(self, name: str, members: list[str]) -> Group:
        _, body = await self._call("POST", "/v1/groups", json={"name": name, "members": members})
        return msgspec.json.decode(body, type=Group)

    async def groups(self) -> list[Group]:
        return (await self._get("/v1/groups", GroupList)).groups

    async def group(self, gid: str) -> Group:
        return await self._get(f"/v1/groups/{quote(gid, safe='')}", Group)

    async def rename_group(self, gid: str, name: str) -> Group:
        _, body = await self._call(
            "PATCH", f"/v1/groups/{quote(gid, safe='')}", json={"name": name}
        )
        return msgspec.json.decode(body, type=Group)

    async def add_member(self, gid: str, username: str, role: str = "member") -> Group:
        _, body = await self._call(
            "POST",
            f"/v1/groups/{quote(gid, safe='')}/members",
            json={"username": username, "role": role},
        )
        return msgspec.json.decode(body, type=Group)

    async def remove_member(self, gid: str, username: str) -> None:
        path = f"/v1/groups/{quote(gid, safe='')}/members/{quote(username, safe='')}"
        await self._call("DELETE", path)


def _error(status: int, body: bytes, retry_after: str | None) -> CourierError:
    try:
        wire = msgspec.json.decode(body, type=ErrorBody).error
        code, message = wire.code, wire.message
    except msgspec.DecodeError:
        code, message = f"http_{status}", body.decode("utf-8", "replace")[:200] or str(status)
    if status == 429 or code == "rate_limited":
        return RateLimited(message, _seconds(retry_after), status)
    return error_from(code, message, status)


def _seconds(value: str | None) -> float | None:
    try:
        return None if value is None else max(0.0, float(value))
    except ValueError:
        return None

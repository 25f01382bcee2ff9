"""HTTP routes of profiles, people search and blocks (PROTOCOL.md, "Profiles and finding
people", "Blocking")."""

from __future__ import annotations

from aiohttp import web

from courier.domain.errors import bad_request
from courier.domain.profiles import SEARCH_LIMIT_DEFAULT
from courier.service.blocks import Blocks
from courier.service.presence import Presence
from courier.service.profiles import Profiles
from courier.transport import wire
from courier.transport.http_api import HttpApi, json_response, limit_param


class ProfileRoutes:
    def __init__(
        self, api: HttpApi, profiles: Profiles, blocks: Blocks, presence: Presence
    ) -> None:
        self.api = api
        self.profiles = profiles
        self.blocks = blocks
        self.presence = presence

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/me", self.me),
            web.patch("/v1/me", self.update),
            web.get("/v1/users", self.search),
            web.get("/v1/presence", self.query_presence),
            web.get("/v1/blocks", self.list_blocks),
            web.put("/v1/blocks/{username}", self.block),
            web.delete("/v1/blocks/{username}", self.unblock),
        ]

    async def me(self, request: web.Request) -> web.Response:
        session = await self.api.session(request)
        return json_response(await self.profiles.me(session))

    async def update(self, request: web.Request) -> web.Response:
        session = await self.api.session(request)
        body = await self.api.decode(request, wire.ProfileBody)
        return json_response(await self.profiles.set_display_name(session, body.display_name))

    async def search(self, request: web.Request) -> web.Response:
        session = await self.api.session(request)
        q = request.query.get("q", "")
        limit = limit_param(request, SEARCH_LIMIT_DEFAULT)
        users = await self.profiles.search(session, q, limit)
        return json_response({"users": users})

    async def list_blocks(self, request: web.Request) -> web.Response:
        session = await self.api.session(request)
        return json_response({"blocks": await self.blocks.list(session)})

    async def block(self, request: web.Request) -> web.Response:
        session = await self.api.session(request)
        await self.blocks.block(session, request.match_info["username"])
        return web.Response(status=204)

    async def unblock(self, request: web.Request) -> web.Response:
        session = await self.api.session(request)
        await self.blocks.unblock(session, request.match_info["username"])
        return web.Response(status=204)

    async def query_presence(self, request: web.Request) -> web.Response:
        session = await self.api.session(request)
        raw = request.query.get("users", "")
        users = [u for u in raw.split(",") if u] if raw else []
        if len(users) > 100 or len(raw) > 100 * 33:
            raise bad_request("users names 1..100 usernames, separated by commas.")
        return json_response({"presence": await self.presence.query(session, users)})

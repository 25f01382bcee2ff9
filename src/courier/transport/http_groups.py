"""HTTP routes of groups (PROTOCOL.md, "Groups"). Parsing and mapping only."""

from __future__ import annotations

from aiohttp import web

from courier.domain.groups import GroupState, group_object
from courier.service.delivery import HISTORY_LIMIT_DEFAULT
from courier.service.groups import Groups
from courier.transport import wire
from courier.transport.http_api import HttpApi, int_param, json_response, limit_param, raw_json


class GroupRoutes:
    def __init__(self, api: HttpApi, groups: Groups) -> None:
        self.api = api
        self.groups = groups

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/groups", self.create),
            web.get("/v1/groups", self.list),
            web.get("/v1/groups/{id}", self.get),
            web.patch("/v1/groups/{id}", self.rename),
            web.post("/v1/groups/{id}/members", self.add),
            web.delete("/v1/groups/{id}/members/{username}", self.remove),
            web.get("/v1/groups/{id}/messages", self.history),
        ]

    async def create(self, request: web.Request) -> web.Response:
        session = await self.api.session(request)
        body = await self.api.decode(request, wire.CreateGroupBody)
        state = await self.groups.create(session, body.name, body.members)
        return json_response(group_object(state), 201)

    async def list(self, request: web.Request) -> web.Response:
        session = await self.api.session(request)
        states = await self.groups.list(session)
        return json_response({"groups": [group_object(s) for s in states]})

    async def get(self, request: web.Request) -> web.Response:
        session = await self.api.session(request)
        return _group(await self.groups.get(session, request.match_info["id"]))

    async def rename(self, request: web.Request) -> web.Response:
        session = await self.api.session(request)
        body = await self.api.decode(request, wire.RenameGroupBody)
        return _group(await self.groups.rename(session, request.match_info["id"], body.name))

    async def add(self, request: web.Request) -> web.Response:
        session = await self.api.session(request)
        body = await self.api.decode(request, wire.AddMemberBody)
        gid = request.match_info["id"]
        return _group(await self.groups.add(session, gid, body.username, body.role))

    async def remove(self, request: web.Request) -> web.Response:
        session = await self.api.session(request)
        gid, username = request.match_info["id"], request.match_info["username"]
        await self.groups.remove(session, gid, username)
        return web.Response(status=204)

    async def history(self, request: web.Request) -> web.Response:
        session = await self.api.session(request)
        gid = request.match_info["id"]
        before = int_param(request, "before", None)
        limit = limit_param(request, HISTORY_LIMIT_DEFAULT)
        rows, next_before = await self.api.delivery.history(session, gid, before, limit)
        cursor = b"null" if next_before is None else b"%d" % next_before
        messages = b",".join(data for _seq, data in rows)
        return raw_json(b'{"messages":[' + messages + b'],"next_before":' + cursor + b"}")


def _group(state: GroupState) -> web.Response:
    return json_response(group_object(state))

"""Group membership: create, list, get, rename, add, remove, leave, roles.

The rules (who may do what, owner hand-over) live in domain.groups and are applied by the
store's writer, so a change and the membership it was decided on are one atomic step. This
service bounds the input, submits the change and pushes the membership events it produced.
Group messages go through Delivery like every other message.
"""

from __future__ import annotations

from typing import Literal

from courier.domain.errors import unknown_user
from courier.domain.groups import (
    GroupState,
    check_name,
    check_role,
    group_full,
    unknown_group,
    valid_group_id,
)
from courier.domain.names import valid_username
from courier.domain.ops import ChangeGroup, CreateGroup, GroupResult
from courier.ports import Store
from courier.service.accounts import Session, now_ms
from courier.service.delivery import Delivery
from courier.service.ratelimit import KeyedLimiter


class Groups:
    def __init__(
        self,
        store: Store,
        delivery: Delivery,
        *,
        max_members: int,
        max_groups: int = 500,
        change_rate: float = 2.0,
        change_burst: int = 30,
    ) -> None:
        self._store = store
        self._delivery = delivery
        self.max_members = max_members
        self.max_groups = max_groups
        self._limit = KeyedLimiter(change_rate, change_burst)

    async def create(self, session: Session, name: str, members: list[str]) -> GroupState:
        check_name(name)
        if len(members) > self.max_members:
            raise group_full(self.max_members)
        for username in members:
            if not valid_username(username):
                raise unknown_user(username)
        self._limit.check(session.username)
        ts = now_ms()
        gid = "G" + self._delivery.new_id(ts)
        op = CreateGroup(
            gid, name, session.username, tuple(members), ts, self.max_members, self.max_groups
        )
        return self._done(await self._store.submit(op))

    async def list(self, session: Session) -> list[GroupState]:
        return await self._store.user_groups(session.username, self.max_groups)

    async def get(self, session: Session, gid: str) -> GroupState:
        return await self._delivery.member_group(session.username, gid)

    async def rename(self, session: Session, gid: str, name: str) -> GroupState:
        check_name(name)
        return await self._change(session, gid, "rename", name=name)

    async def add(self, session: Session, gid: str, username: str, role: str) -> GroupState:
        check_role(role)
        if not valid_username(username):
            raise unknown_user(username)
        return await self._change(session, gid, "add", member=username, role=role)

    async def remove(self, session: Session, gid: str, username: str) -> None:
        # Any name: one that is no member's gets 404 unknown_member from the rules.
        await self._change(session, gid, "remove", member=username[:64])

    async def _change(
        self,
        session: Session,
        gid: str,
        kind: Literal["rename", "add", "remove"],
        *,
        member: str = "",
        role: str = "member",
        name: str = "",
    ) -> GroupState:
        if not valid_group_id(gid):
            raise unknown_group(gid)
        self._limit.check(session.username)
        op = ChangeGroup(
            gid,
            session.username,
            kind,
            now_ms(),
            member,
            role,
            name,
            self.max_members,
            self.max_groups,
        )
        result: GroupResult = await self._store.submit(op)
        state = self._done(result)
        return state

    def _done(self, result: GroupResult) -> GroupState:
        self._delivery.publish_all(result.published)
        if result.group is None:  # its last member left
            return GroupState("", "", 0, ())
        return result.group

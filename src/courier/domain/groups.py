"""Groups: their state, their membership rules and their events (PROTOCOL.md, "Groups").

The rules are pure functions over a group's state, so every store applies exactly the same
ones inside its writer, where the membership read and the change it allows are one atomic
step: a change decided on a stale member list is impossible.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from courier.domain.errors import CourierError, bad_request, unknown_user
from courier.domain.names import valid_username

Role = Literal["owner", "admin", "member"]
ROLES: tuple[Role, ...] = ("owner", "admin", "member")
Action = Literal["created", "added", "removed", "left", "renamed", "role"]

NAME_MAX = 64
GROUP_ID_MAX = 64
# A server-made id: "G" then 32 hex digits (a time-ordered id). The capital letter keeps it
# apart from every username (lowercase only), so one key space serves peers and groups.
_GROUP_ID = re.compile(r"G[0-9a-f]{32}")
RECEIPTS_MAX_MEMBERS = 100  # larger groups get no per-member receipts (docs/protocol.md)


def valid_group_id(gid: str) -> bool:
    return _GROUP_ID.fullmatch(gid) is not None


def is_group(conversation: str) -> bool:
    """A conversation key names a group (else a peer): group ids start with "G"."""
    return conversation[:1] == "G"


class Member(msgspec.Struct, array_like=True, frozen=True):
    username: str
    role: Role
    order: int  # when the member joined, counted per group: smaller is longer-standing


class GroupState(msgspec.Struct, frozen=True):
    id: str
    name: str
    created_ts: int
    members: tuple[Member, ...]
    next_order: int = 0

    def member(self, username: str) -> Member | None:
        for m in self.members:
            if m.username == username:
                return m
        return None

    @property
    def usernames(self) -> tuple[str, ...]:
        return tuple(m.username for m in self.members)


class GroupEvent(msgspec.Struct, kw_only=True):
    seq: int
    type: Literal["group"] = "group"
    group: str
    action: Action
    by: str
    member: str | None
    name: str
    role: Role | None
    ts: int


class GroupMessageEvent(msgspec.Struct, kw_only=True):
    seq: int
    type: Literal["message"] = "message"
    id: str
    from_: str = msgspec.field(name="from")
    group: str
    body: str
    ts: int
    client_id: str


class GroupReceiptEvent(msgspec.Struct, kw_only=True):
    seq: int
    type: Literal["receipt"] = "receipt"
    status: Literal["delivered", "read"]
    group: str
    peer: str
    up_to: int
    ts: int


class Change(msgspec.Struct, frozen=True):
    """One membership event to append: to `recipients` (every member after the change, and
    the member concerned)."""

    action: Action
    by: str
    member: str | None
    role: Role | None
    recipients: tuple[str, ...]


def unknown_group(gid: str) -> CourierError:
    return CourierError("unknown_group", f"There is no group {gid!r} you are a member of.", 404)


def forbidden(message: str) -> CourierError:
    return CourierError("forbidden", message, 403)


def group_full(limit: int) -> CourierError:
    return CourierError("group_full", f"A group has at most {limit} members.", 409)


def too_many_groups(username: str, limit: int) -> CourierError:
    return CourierError(
        "too_many_groups", f"{username!r} is already in {limit} groups, as many as allowed.", 409
    )


def check_name(name: str) -> str:
    if not 1 <= len(name) <= NAME_MAX or not name.strip():
        raise bad_request(f"A group name is 1..{NAME_MAX} characters, not only spaces.")
    return name


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise bad_request("role must be one of owner, admin, member.")
    return role


def new_group(
    gid: str, name: str, owner: str, others: tuple[str, ...], ts: int, max_members: int
) -> tuple[GroupState, Change]:
    members = [Member(owner, "owner", 0)]
    seen = {owner}
    for username in others:
        if username in seen:
            continue
        seen.add(username)
        members.append(Member(username, "member", len(members)))
    if len(members) > max_members:
        raise group_full(max_members)
    state = GroupState(gid, check_name(name), ts, tuple(members), len(members))
    return state, Change("created", owner, None, None, state.usernames)


def check_usernames(names: tuple[str, ...]) -> None:
    for username in names:
        if not valid_username(username):
            raise unknown_user(username)


def _replace(state: GroupState, members: list[Member], **kw: object) -> GroupState:
    return msgspec.structs.replace(state, members=tuple(members), **kw)


def rename(state: GroupState, by: str, name: str) -> tuple[GroupState, list[Change]]:
    actor = _actor(state, by)
    if actor.role == "member":
        raise forbidden("Only the owner or an admin renames a group.")
    new = msgspec.structs.replace(state, name=check_name(name))
    return new, [Change("renamed", by, None, None, new.usernames)]


def add_member(
    state: GroupState, by: str, username: str, role: Role, max_members: int
) -> tuple[GroupState, list[Change]]:
    """Adds `username`, or changes the role of a member already there (owner hand-over
    when `role` is owner)."""
    actor = check_adder(state, by)
    current = state.member(username)
    if current is None:
        if role == "owner":
            raise bad_request("A new member joins as admin or member; hand over later.")
        if len(state.members) >= max_members:
            raise group_full(max_members)
        members = [*state.members, Member(username, role, state.next_order)]
        new = _replace(state, members, next_order=state.next_order + 1)
        return new, [Change("added", by, username, role, new.usernames)]
    if current.role == role:
        return state, []
    if current.role == "owner":
        raise forbidden("The owner's role changes only by handing it to another member.")
    if role == "owner" and actor.role != "owner":
        raise forbidden("Only the owner hands over ownership.")
    members = []
    for m in state.members:
        if m.username == username:
            m = Member(m.username, role, m.order)
        elif role == "owner" and m.role == "owner":
            m = Member(m.username, "admin", m.order)
        members.append(m)
    new = _replace(state, members)
    changes = [Change("role", by, username, role, new.usernames)]
    if role == "owner":
        changes.append(Change("role", by, by, "admin", new.usernames))
    return new, changes


def remove_member(state: GroupState, by: str, username: str) -> tuple[GroupState, list[Change]]:
    """`by` removes `username`, or leaves when they are the same. An owner who leaves hands
    ownership to the longest-standing admin, else the longest-standing member."""
    actor = _actor(state, by)
    target = state.member(username)
    if target is None:
        raise CourierError("unknown_member", f"{username!r} is not a member of this group.", 404)
    if by != username:
        if actor.role == "member":
            raise forbidden("Only the owner or an admin removes members.")
        if target.role == "owner":
            raise forbidden("The owner cannot be removed.")
        if target.role == "admin" and actor.role != "owner":
            raise forbidden("Only the owner removes an admin.")
    rest = [m for m in state.members if m.username != username]
    action: Action = "left" if by == username else "removed"
    changes: list[Change] = []
    if target.role == "owner" and rest:
        heir = min(rest, key=lambda m: (m.role != "admin", m.order))
        rest = [Member(m.username, "owner", m.order) if m is heir else m for m in rest]
        new = _replace(state, rest)
        changes.append(Change(action, by, username, None, (*new.usernames, username)))
        changes.append(Change("role", by, heir.username, "owner", new.usernames))
        return new, changes
    new = _replace(state, rest)
    return new, [Change(action, by, username, None, (*new.usernames, username))]


def check_adder(state: GroupState, by: str) -> Member:
    """`by` may add members: 404 for a non-member, 403 for a plain member (before anything
    is said about the user to add, so a member cannot probe usernames through a group)."""
    actor = _actor(state, by)
    if actor.role == "member":
        raise forbidden("Only the owner or an admin adds members or changes roles.")
    return actor


def _actor(state: GroupState, by: str) -> Member:
    actor = state.member(by)
    if actor is None:
        raise unknown_group(state.id)
    return actor


def event_tail(gid: str, name: str, change: Change, ts: int) -> GroupEvent:
    return GroupEvent(
        seq=0,
        group=gid,
        action=change.action,
        by=change.by,
        member=change.member,
        name=name,
        role=change.role,
        ts=ts,
    )


def group_object(state: GroupState) -> dict[str, object]:
    """The contract's group object."""
    return {
        "id": state.id,
        "name": state.name,
        "members": [{"username": m.username, "role": m.role} for m in state.members],
        "created_ts": state.created_ts,
    }

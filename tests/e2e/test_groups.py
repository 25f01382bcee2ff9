"""Groups end to end: membership, roles, fan-out into every member's timeline, receipts,
read markers, typing, conversations and history (PROTOCOL.md, "Groups")."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.support import assert_error
from tests.helpers import Api, Reply, User, unique


async def create(api: Api, owner: User, members: list[User], name: str = "team") -> Reply:
    body = {"name": name, "members": [m.name for m in members]}
    return await api.call("POST", "/v1/groups", user=owner, json_body=body)


async def group_send(api: Api, user: User, gid: str, body: str, cid: str) -> Reply:
    msg = {"group": gid, "body": body, "client_id": cid}
    return await api.call("POST", "/v1/messages", user=user, json_body=msg)


async def add(api: Api, by: User, gid: str, name: str, role: str | None = None) -> Reply:
    body: dict[str, Any] = {"username": name}
    if role is not None:
        body["role"] = role
    return await api.call("POST", f"/v1/groups/{gid}/members", user=by, json_body=body)


async def remove(api: Api, by: User, gid: str, name: str) -> Reply:
    return await api.call("DELETE", f"/v1/groups/{gid}/members/{name}", user=by)


GROUP_EVENT_FIELDS = ("seq", "type", "group", "action", "by", "member", "name", "role", "ts")


def roles(group: dict[str, Any]) -> dict[str, str]:
    return {m["username"]: m["role"] for m in group["members"]}


def messages(events: list[dict[str, Any]]) -> list[str]:
    return [e["body"] for e in events if e["type"] == "message"]


@pytest.fixture
async def trio(api: Api) -> tuple[User, User, User, str]:
    alice, bob, carol = await api.user(), await api.user(), await api.user()
    r = await create(api, alice, [bob, carol])
    assert r.status == 201, r
    return alice, bob, carol, r.body["id"]


async def test_create_makes_the_caller_owner_and_tells_every_member(
    api: Api, trio: tuple[User, User, User, str]
) -> None:
    alice, bob, carol, gid = trio
    r = await api.call("GET", f"/v1/groups/{gid}", user=bob)
    assert r.status == 200, r
    assert set(r.body) == {"id", "name", "members", "created_ts"}
    assert r.body["name"] == "team" and len(gid) <= 64
    assert roles(r.body) == {alice.name: "owner", bob.name: "member", carol.name: "member"}
    for user in (alice, bob, carol):
        [event] = await api.timeline(user)
        assert event["type"] == "group" and event["action"] == "created"
        assert event["group"] == gid and event["by"] == alice.name and event["name"] == "team"
        assert set(event) == {
            "seq",
            "type",
            "group",
            "action",
            "by",
            "member",
            "name",
            "role",
            "ts",
        }
    listed = await api.call("GET", "/v1/groups", user=carol)
    assert [g["id"] for g in listed.body["groups"]] == [gid]


async def test_a_group_message_lands_in_every_members_timeline_once(
    api: Api, trio: tuple[User, User, User, str]
) -> None:
    alice, bob, carol, gid = trio
    r = await group_send(api, bob, gid, "hello all", "c1")
    assert r.status == 201, r
    again = await group_send(api, bob, gid, "hello all", "c1")
    assert again.status == 200 and again.body == r.body
    for user in (alice, bob, carol):
        timeline = await api.timeline(user)
        assert [e["seq"] for e in timeline] == list(range(1, len(timeline) + 1))
        [msg] = [e for e in timeline if e["type"] == "message"]
        assert msg["group"] == gid and msg["from"] == bob.name and msg["body"] == "hello all"
        assert "to" not in msg
        assert set(msg) == {"seq", "type", "id", "from", "group", "body", "ts", "client_id"}
    bob_copy = next(e for e in await api.timeline(bob) if e["type"] == "message")
    assert bob_copy["seq"] == r.body["seq"]


async def test_non_members_and_bad_ids_get_unknown_group(
    api: Api, trio: tuple[User, User, User, str]
) -> None:
    _alice, _bob, _carol, gid = trio
    mallory = await api.user()
    assert_error(await group_send(api, mallory, gid, "hi", "m1"), 404, "unknown_group")
    assert_error(await api.call("GET", f"/v1/groups/{gid}", user=mallory), 404, "unknown_group")
    missing = "G" + "0" * 32
    assert_error(await api.call("GET", f"/v1/groups/{missing}", user=mallory), 404, "unknown_group")
    assert_error(await api.call("GET", "/v1/groups/nonsense", user=mallory), 404, "unknown_group")
    history = await api.call("GET", f"/v1/groups/{gid}/messages", user=mallory)
    assert_error(history, 404, "unknown_group")
    both = {"to": _bob.name, "group": gid, "body": "x", "client_id": "b"}
    assert_error(await api.call("POST", "/v1/messages", user=_alice, json_body=both), 400)


async def test_create_with_an_unknown_user_makes_no_group(api: Api) -> None:
    alice = await api.user()
    body = {"name": "x", "members": [unique("ghost")]}
    assert_error(
        await api.call("POST", "/v1/groups", user=alice, json_body=body), 404, "unknown_user"
    )
    assert (await api.call("GET", "/v1/groups", user=alice)).body == {"groups": []}
    assert await api.timeline(alice) == []


async def test_a_plain_member_learns_nothing_about_usernames_by_adding(
    api: Api, trio: tuple[User, User, User, str]
) -> None:
    """Adding is refused for its rights first: a plain member hears 403 whether the name
    exists or not; an admin hears 404 `unknown_user` for a name that does not."""
    alice, bob, _carol, gid = trio
    dave = await api.user()
    for name in (unique("ghost"), dave.name):
        assert_error(await add(api, bob, gid, name), 403, "forbidden")
    assert_error(await add(api, alice, gid, unique("ghost")), 404, "unknown_user")
    outsider = await api.user()
    assert_error(await add(api, outsider, gid, unique("ghost")), 404, "unknown_group")


@pytest.mark.parametrize("name", ["", " ", "x" * 65])
async def test_bad_names_are_refused(api: Api, name: str) -> None:
    alice = await api.user()
    r = await api.call("POST", "/v1/groups", user=alice, json_body={"name": name, "members": []})
    assert_error(r, 400, "bad_request")


async def test_only_owner_or_admin_renames_and_adds(
    api: Api, trio: tuple[User, User, User, str]
) -> None:
    alice, bob, carol, gid = trio
    dave = await api.user()
    r = await api.call("PATCH", f"/v1/groups/{gid}", user=bob, json_body={"name": "mine"})
    assert_error(r, 403, "forbidden")
    assert_error(await add(api, bob, gid, dave.name), 403, "forbidden")
    r = await add(api, alice, gid, bob.name, "admin")
    assert r.status == 200 and roles(r.body)[bob.name] == "admin"
    r = await api.call("PATCH", f"/v1/groups/{gid}", user=bob, json_body={"name": "renamed"})
    assert r.status == 200 and r.body["name"] == "renamed"
    r = await add(api, bob, gid, dave.name)
    assert r.status == 200 and roles(r.body)[dave.name] == "member"
    actions = [e["action"] for e in await api.timeline(carol) if e["type"] == "group"]
    assert actions == ["created", "role", "renamed", "added"]
    dave_events = await api.timeline(dave)
    assert [(e["action"], e["member"]) for e in dave_events] == [("added", dave.name)]


async def test_a_member_added_later_sees_messages_from_then_on(
    api: Api, trio: tuple[User, User, User, str]
) -> None:
    alice, bob, _carol, gid = trio
    dave = await api.user()
    await group_send(api, bob, gid, "before", "b1")
    assert (await add(api, alice, gid, dave.name)).status == 200
    await group_send(api, bob, gid, "after", "b2")
    assert messages(await api.timeline(dave)) == ["after"]
    page = await api.call("GET", f"/v1/groups/{gid}/messages", user=dave)
    assert [m.get("body") for m in page.body["messages"] if m["type"] == "message"] == ["after"]


async def test_a_removed_member_gets_removed_and_nothing_after(
    api: Api, trio: tuple[User, User, User, str]
) -> None:
    alice, bob, carol, gid = trio
    await group_send(api, bob, gid, "one", "b1")
    assert (await remove(api, alice, gid, carol.name)).status == 204
    await group_send(api, bob, gid, "two", "b2")
    timeline = await api.timeline(carol)
    assert messages(timeline) == ["one"]
    assert timeline[-1]["action"] == "removed" and timeline[-1]["member"] == carol.name
    assert_error(await group_send(api, carol, gid, "let me", "c1"), 404, "unknown_group")
    assert_error(await api.call("GET", f"/v1/groups/{gid}", user=carol), 404, "unknown_group")
    page = await api.call("GET", f"/v1/groups/{gid}/messages", user=carol)
    assert page.status == 200  # their own history stays theirs
    assert messages(page.body["messages"][::-1]) == ["one"]


async def test_members_cannot_remove_others_and_nobody_removes_the_owner(
    api: Api, trio: tuple[User, User, User, str]
) -> None:
    alice, bob, carol, gid = trio
    assert_error(await remove(api, bob, gid, carol.name), 403, "forbidden")
    await add(api, alice, gid, bob.name, "admin")
    assert_error(await remove(api, bob, gid, alice.name), 403, "forbidden")
    assert (await remove(api, bob, gid, carol.name)).status == 204


async def test_an_owner_who_leaves_hands_over_to_the_longest_standing_admin(
    api: Api, trio: tuple[User, User, User, str]
) -> None:
    alice, bob, carol, gid = trio
    await add(api, alice, gid, carol.name, "admin")
    await add(api, alice, gid, bob.name, "admin")
    assert (await remove(api, alice, gid, alice.name)).status == 204
    r = await api.call("GET", f"/v1/groups/{gid}", user=bob)
    assert roles(r.body) == {bob.name: "owner", carol.name: "admin"}  # bob joined first
    last = (await api.timeline(carol))[-2:]
    assert [(e["action"], e["member"]) for e in last] == [("left", alice.name), ("role", bob.name)]


async def test_owner_hands_over_explicitly(api: Api, trio: tuple[User, User, User, str]) -> None:
    alice, bob, _carol, gid = trio
    r = await add(api, alice, gid, bob.name, "owner")
    assert r.status == 200
    assert roles(r.body)[bob.name] == "owner" and roles(r.body)[alice.name] == "admin"


async def test_group_full(api: Api, settings_overrides: dict[str, Any]) -> None:
    alice, bob = await api.user(), await api.user()
    max_members = 1000
    r = await api.call(
        "POST",
        "/v1/groups",
        user=alice,
        json_body={"name": "big", "members": [f"u{i:04d}x" for i in range(max_members + 1)]},
    )
    assert_error(r, 409, "group_full")
    del bob


async def test_receipts_per_member_and_read_markers(
    api: Api, trio: tuple[User, User, User, str]
) -> None:
    alice, bob, carol, gid = trio
    sent = await group_send(api, alice, gid, "read me", "a1")
    bob_msg = next(e for e in await api.timeline(bob) if e["type"] == "message")
    assert (
        await api.call("POST", "/v1/ack", user=bob, json_body={"seq": bob_msg["seq"]})
    ).status == 204
    r = await api.call(
        "POST", "/v1/read", user=bob, json_body={"group": gid, "seq": bob_msg["seq"]}
    )
    assert r.status == 204, r
    receipts = [e for e in await api.timeline(alice) if e["type"] == "receipt"]
    assert [(e["status"], e["peer"], e["group"], e["up_to"]) for e in receipts] == [
        ("delivered", bob.name, gid, sent.body["seq"]),
        ("read", bob.name, gid, sent.body["seq"]),
    ]
    convs = await api.call("GET", "/v1/conversations", user=carol)
    [conv] = convs.body["conversations"]
    assert conv["group"] == gid and conv["name"] == "team" and conv["unread"] == 1
    assert conv["last"]["body"] == "read me"
    bob_convs = (await api.call("GET", "/v1/conversations", user=bob)).body["conversations"]
    assert bob_convs[0]["unread"] == 0


async def test_group_history_pages_by_cursor(api: Api, trio: tuple[User, User, User, str]) -> None:
    alice, bob, _carol, gid = trio
    for i in range(7):
        await group_send(api, alice if i % 2 else bob, gid, f"m{i}", f"c{i}")
    seen: list[str] = []
    before = None
    while True:
        q = "?limit=3" + (f"&before={before}" if before else "")
        page = await api.call("GET", f"/v1/groups/{gid}/messages{q}", user=bob)
        assert page.status == 200, page
        seen += [m["body"] for m in page.body["messages"] if m["type"] == "message"]
        before = page.body["next_before"]
        if before is None:
            break
    assert seen == [f"m{i}" for i in reversed(range(7))]


async def test_ws_group_send_typing_and_live_delivery(
    api: Api, trio: tuple[User, User, User, str]
) -> None:
    alice, bob, carol, gid = trio
    ws_a, ws_b, ws_c = await api.ws(alice), await api.ws(bob), await api.ws(carol)
    for ws in (ws_a, ws_b, ws_c):
        assert (await ws.recv())["type"] == "hello"
    await ws_b.send({"type": "typing", "group": gid})
    for ws in (ws_a, ws_c):
        frame = await ws.recv_until(lambda f: f["type"] == "typing")
        assert frame == {"type": "typing", "from": bob.name, "group": gid}
    await ws_a.send({"type": "send", "group": gid, "body": "live", "client_id": "w1"})
    sent = await ws_a.recv_until(lambda f: f["type"] == "sent")
    for ws in (ws_b, ws_c):
        frame = await ws.recv_until(lambda f: f["type"] == "message")
        assert frame["body"] == "live" and frame["group"] == gid and frame["from"] == alice.name
    assert sent["client_id"] == "w1"
    mallory = await api.user()
    ws_m = await api.ws(mallory)
    await ws_m.recv()
    await ws_m.send({"type": "send", "group": gid, "body": "x", "client_id": "m"})
    err = await ws_m.recv_until(lambda f: f["type"] == "error")
    assert err["code"] == "unknown_group" and err["ref"] == "m"
    for ws in (ws_a, ws_b, ws_c, ws_m):
        await ws.close()


@pytest.mark.parametrize("settings_overrides", [{"user_max_groups": 2}])
async def test_a_user_is_in_at_most_user_max_groups(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    first = await create(api, alice, [bob], "one")
    assert (await create(api, alice, [], "two")).status == 201
    assert_error(await create(api, alice, [], "three"), 409, "too_many_groups")
    assert_error(await create(api, bob, [alice], "four"), 409, "too_many_groups")
    carol = await api.user()
    other = await create(api, carol, [], "five")
    assert (await create(api, carol, [], "six")).status == 201
    r = await add(api, carol, other.body["id"], bob.name)  # bob has room for one more
    assert r.status == 200
    assert_error(await add(api, alice, first.body["id"], carol.name), 409, "too_many_groups")
    assert (await remove(api, bob, first.body["id"], bob.name)).status == 204  # bob leaves
    assert (await create(api, bob, [], "seven")).status == 201
    listed = await api.call("GET", "/v1/groups", user=bob)
    assert len(listed.body["groups"]) == 2

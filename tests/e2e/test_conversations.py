"""GET /v1/conversations and the history pages of one conversation."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.support import assert_error, connect, recv_sent
from tests.helpers import Api, User, unique


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"send_rate": 100_000.0, "send_burst": 100_000}


async def conversations(api: Api, user: User) -> list[dict[str, Any]]:
    r = await api.call("GET", "/v1/conversations", user=user)
    assert r.status == 200, r
    assert set(r.body) == {"conversations"}
    result: list[dict[str, Any]] = r.body["conversations"]
    return result


async def page(api: Api, user: User, peer: str, query: str = "") -> dict[str, Any]:
    r = await api.call("GET", f"/v1/conversations/{peer}/messages?{query}", user=user)
    assert r.status == 200, r
    assert set(r.body) == {"messages", "next_before"}
    body: dict[str, Any] = r.body
    return body


async def fill(api: Api, sender: User, to: User, count: int, tag: str = "h") -> None:
    ws, _ = await connect(api, sender)
    for i in range(count):
        text = f"{tag}{i}"
        await ws.send({"type": "send", "to": to.name, "body": text, "client_id": text})
    assert all(a["type"] == "sent" for a in await recv_sent(ws, count, timeout=30.0))
    await ws.close()


async def test_no_conversations_is_an_empty_list(api: Api) -> None:
    assert await conversations(api, await api.user()) == []


async def test_conversations_are_most_recent_first_with_last_event_and_unread(api: Api) -> None:
    alice, bob, carol = await api.user(), await api.user(), await api.user()
    for i in range(3):
        await api.send(bob, alice.name, f"bob {i}", f"b{i}")
    for i in range(2):
        await api.send(carol, alice.name, f"carol {i}", f"c{i}")
    listed = await conversations(api, alice)
    assert [c["peer"] for c in listed] == [carol.name, bob.name]
    assert [c["unread"] for c in listed] == [2, 3]
    assert listed[0]["last"]["body"] == "carol 1" and listed[0]["last"]["seq"] == 5
    assert listed[1]["last"]["body"] == "bob 2" and listed[1]["last"]["seq"] == 3
    assert set(listed[0]) == {"peer", "last", "unread"}

    await api.send(alice, bob.name, "reply to bob", "a0")
    listed = await conversations(api, alice)
    assert [c["peer"] for c in listed] == [bob.name, carol.name]
    last = listed[0]["last"]
    assert (last["from"], last["body"], last["seq"]) == (alice.name, "reply to bob", 6)
    assert listed[0]["unread"] == 3, "my own messages are never unread"

    bob_view = await conversations(api, bob)
    assert [(c["peer"], c["unread"]) for c in bob_view] == [(alice.name, 1)]


async def test_the_conversation_list_holds_50_by_default_and_more_on_request(api: Api) -> None:
    alice = await api.user()
    peers = [await api.user() for _ in range(55)]
    for i, peer in enumerate(peers):
        await api.send(peer, alice.name, f"hello {i}", f"c{i}")
    listed = await conversations(api, alice)
    assert [c["peer"] for c in listed] == [p.name for p in reversed(peers)][:50]
    r = await api.call("GET", "/v1/conversations?limit=1000", user=alice)
    assert len(r.body["conversations"]) == 55
    assert_error(await api.call("GET", "/v1/conversations?limit=0", user=alice), 400, "bad_request")


async def test_the_read_marker_reduces_unread(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    for i in range(4):
        await api.send(bob, alice.name, f"bob {i}", f"b{i}")
    r = await api.call("POST", "/v1/read", user=alice, json_body={"peer": bob.name, "seq": 2})
    assert r.status == 204
    assert [c["unread"] for c in await conversations(api, alice)] == [2]
    r = await api.call("POST", "/v1/read", user=alice, json_body={"peer": bob.name, "seq": 1})
    assert [c["unread"] for c in await conversations(api, alice)] == [2], "never goes back"
    r = await api.call("POST", "/v1/read", user=alice, json_body={"peer": bob.name, "seq": 4})
    assert [c["unread"] for c in await conversations(api, alice)] == [0]
    await api.send(bob, alice.name, "one more", "b9")
    assert [c["unread"] for c in await conversations(api, alice)] == [1]


async def test_history_is_newest_first_and_pages_back_until_null(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    await fill(api, alice, bob, 120)
    seen: list[dict[str, Any]] = []
    sizes = []
    query = ""
    while True:
        body = await page(api, alice, bob.name, query)
        sizes.append(len(body["messages"]))
        seen.extend(body["messages"])
        if body["next_before"] is None:
            break
        assert body["next_before"] == body["messages"][-1]["seq"]
        query = f"before={body['next_before']}"
    assert sizes == [50, 50, 20]
    assert [m["seq"] for m in seen] == list(range(120, 0, -1))
    assert [m["body"] for m in seen] == [f"h{i}" for i in range(119, -1, -1)]


async def test_history_limit_is_capped_at_200(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    await fill(api, alice, bob, 230)
    body = await page(api, bob, alice.name, "limit=1000")
    assert len(body["messages"]) == 200
    assert body["next_before"] == 31
    rest = await page(api, bob, alice.name, "before=31&limit=1000")
    assert [m["seq"] for m in rest["messages"]] == list(range(30, 0, -1))
    assert rest["next_before"] is None
    small = await page(api, bob, alice.name, "limit=3")
    assert [m["seq"] for m in small["messages"]] == [230, 229, 228]
    assert small["next_before"] == 228


async def test_a_page_that_fits_exactly_has_no_next_cursor(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    for i in range(3):
        await api.send(alice, bob.name, f"m{i}", f"c{i}")
    body = await page(api, alice, bob.name, "limit=3")
    assert len(body["messages"]) == 3 and body["next_before"] is None


async def test_history_holds_only_the_readers_own_timeline(api: Api) -> None:
    alice, bob, carol = await api.user(), await api.user(), await api.user()
    await api.send(carol, bob.name, "carol to bob", "k1")
    await api.send(alice, bob.name, "alice to bob", "a1")
    await api.send(carol, alice.name, "carol to alice", "k2")
    await api.send(bob, alice.name, "bob to alice", "b1")
    await api.call("POST", "/v1/ack", user=bob, json_body={"seq": 2})  # a receipt for alice

    alice_page = await page(api, alice, bob.name)
    assert [(m["seq"], m["body"]) for m in alice_page["messages"]] == [
        (3, "bob to alice"),
        (1, "alice to bob"),
    ]
    bob_page = await page(api, bob, alice.name)
    assert [(m["seq"], m["body"]) for m in bob_page["messages"]] == [
        (3, "bob to alice"),
        (2, "alice to bob"),
    ]
    alice_line = {e["seq"]: e for e in await api.timeline(alice)}
    for m in alice_page["messages"]:
        assert alice_line[m["seq"]] == m, "same shape and seq as the reader's timeline"
    assert all(m["type"] == "message" for m in alice_page["messages"])


async def test_history_with_a_known_user_never_talked_to_is_empty(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    assert await page(api, alice, bob.name) == {"messages": [], "next_before": None}


@pytest.mark.parametrize("query", ["before=0", "before=-5", "before=x", "limit=0", "limit=-1"])
async def test_bad_history_parameters_are_400(api: Api, query: str) -> None:
    alice, bob = await api.user(), await api.user()
    await api.send(alice, bob.name, "hi", "c1")
    r = await api.call("GET", f"/v1/conversations/{bob.name}/messages?{query}", user=alice)
    assert_error(r, 400, "bad_request")


async def test_history_of_an_unknown_peer_is_404(api: Api) -> None:
    alice = await api.user()
    for peer in (unique("ghost"), "NotValid"):
        r = await api.call("GET", f"/v1/conversations/{peer}/messages", user=alice)
        assert_error(r, 404, "unknown_user")

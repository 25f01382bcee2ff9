"""Accounts and sessions: registration, login, logout, durable tokens, listing and ending
sessions, and idle expiry."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from courier.server import Server
from courier.service.accounts import DAY_MS, now_ms
from tests.e2e.support import assert_error, connect, eventually, metric
from tests.helpers import PASSWORD, Api, User, unique


async def test_register_answers_201_with_the_username(api: Api) -> None:
    name = unique("acct")
    r = await api.call("POST", "/v1/users", json_body={"username": name, "password": PASSWORD})
    assert r.status == 201
    assert r.body == {"username": name}


async def test_registering_a_taken_username_is_409(api: Api) -> None:
    name = unique("acct")
    body = {"username": name, "password": PASSWORD}
    assert (await api.call("POST", "/v1/users", json_body=body)).status == 201
    again = await api.call("POST", "/v1/users", json_body={**body, "password": "another one"})
    assert_error(again, 409, "username_taken")


@pytest.mark.parametrize(
    "username",
    [
        "ab",  # too short
        "Alice",  # uppercase
        "alice\n",  # a trailing newline (re.match with $ would let it through)
        "alice\r\n",
        "al ice",  # space
        "al!ce",  # bad character
        "_alice",  # must start with a letter or digit
        "a" * 33,  # too long
        "",
        12345,  # not a string
        None,
        ["alice"],
    ],
    ids=lambda v: repr(v)[:20],
)
async def test_invalid_usernames_are_400(api: Api, username: Any) -> None:
    r = await api.call("POST", "/v1/users", json_body={"username": username, "password": PASSWORD})
    assert_error(r, 400, "bad_request")


@pytest.mark.parametrize("username", ["abc", "0.-", "a" + "b_.-9" * 6 + "z"])
async def test_usernames_at_the_bounds_are_accepted(api: Api, username: str) -> None:
    r = await api.call("POST", "/v1/users", json_body={"username": username, "password": PASSWORD})
    assert r.status == 201, r
    assert r.body == {"username": username}


@pytest.mark.parametrize("password", ["x" * 7, "x" * 257, "", 12345678, None])
async def test_invalid_passwords_are_400(api: Api, password: Any) -> None:
    r = await api.call(
        "POST", "/v1/users", json_body={"username": unique("acct"), "password": password}
    )
    assert_error(r, 400, "bad_request")


@pytest.mark.parametrize("length", [8, 256])
async def test_passwords_at_the_length_bounds_are_accepted(api: Api, length: int) -> None:
    name, password = unique("acct"), "p" * length
    body = {"username": name, "password": password}
    assert (await api.call("POST", "/v1/users", json_body=body)).status == 201
    assert (await api.call("POST", "/v1/sessions", json_body=body)).status == 201


async def test_missing_fields_and_bad_json_are_400(api: Api) -> None:
    bodies: list[Any] = [{"username": unique("acct")}, {"password": PASSWORD}, {}, [], "x", 3]
    for body in bodies:
        assert_error(await api.call("POST", "/v1/users", json_body=body), 400, "bad_request")
    json_type = {"Content-Type": "application/json"}
    r = await api.call("POST", "/v1/users", data=b"{not json", headers=json_type)
    assert_error(r, 400, "bad_request")
    r = await api.call("POST", "/v1/sessions", data=b"{", headers=json_type)
    assert_error(r, 400, "bad_request")


async def test_login_answers_201_with_a_token_and_the_username(api: Api) -> None:
    name = unique("acct")
    await api.call("POST", "/v1/users", json_body={"username": name, "password": PASSWORD})
    r = await api.call("POST", "/v1/sessions", json_body={"username": name, "password": PASSWORD})
    assert r.status == 201
    assert set(r.body) == {"token", "username"}
    assert r.body["username"] == name
    assert isinstance(r.body["token"], str) and len(r.body["token"]) >= 32


async def test_each_login_is_a_new_token(api: Api) -> None:
    user = await api.user()
    other = await api.login(user.name)
    assert other.token != user.token
    for u in (user, other):
        assert (await api.call("GET", "/v1/conversations", user=u)).status == 200


async def test_wrong_password_and_unknown_user_are_401_invalid_credentials(api: Api) -> None:
    user = await api.user()
    wrong = await api.call(
        "POST", "/v1/sessions", json_body={"username": user.name, "password": "wrong password"}
    )
    assert_error(wrong, 401, "invalid_credentials")
    unknown = await api.call(
        "POST", "/v1/sessions", json_body={"username": unique("ghost"), "password": PASSWORD}
    )
    assert_error(unknown, 401, "invalid_credentials")
    assert wrong.body["error"]["message"] == unknown.body["error"]["message"]


ENDPOINTS: list[tuple[str, str, Any]] = [
    ("DELETE", "/v1/sessions/current", None),
    ("GET", "/v1/sessions", None),
    ("DELETE", "/v1/sessions/0123456789abcdef", None),
    ("POST", "/v1/messages", {"to": "someone", "body": "hi", "client_id": "c1"}),
    ("GET", "/v1/events", None),
    ("GET", "/v1/events?wait=5", None),
    ("POST", "/v1/ack", {"seq": 0}),
    ("POST", "/v1/read", {"peer": "someone", "seq": 0}),
    ("GET", "/v1/conversations", None),
    ("GET", "/v1/conversations/someone/messages", None),
]


async def test_logout_is_204_and_then_the_token_is_401_everywhere(api: Api) -> None:
    user = await api.user()
    other_device = await api.login(user.name)
    r = await api.call("DELETE", "/v1/sessions/current", user=user)
    assert r.status == 204
    for method, path, body in ENDPOINTS:
        r = await api.call(method, path, user=user, json_body=body)
        assert_error(r, 401, "unauthorized")
    ws_path = f"/v1/ws?token={user.token}"
    assert_error(await api.call("GET", ws_path), 401, "unauthorized")
    # Only that token: the same user's other session still works.
    assert (await api.call("GET", "/v1/conversations", user=other_device)).status == 200


async def test_logout_ends_a_held_long_poll_promptly(api: Api) -> None:
    user = await api.user()
    poll = asyncio.create_task(api.events(user, 0, wait=30))
    await eventually(lambda: _longpolls_held(api, 1))
    assert (await api.call("DELETE", "/v1/sessions/current", user=user)).status == 204
    r = await asyncio.wait_for(poll, 5.0)
    assert r.status in (200, 401)


async def test_a_long_poll_held_at_logout_is_answered_401(api: Api) -> None:
    user = await api.user()
    poll = asyncio.create_task(api.events(user, 0, wait=30))
    await eventually(lambda: _longpolls_held(api, 1))
    assert (await api.call("DELETE", "/v1/sessions/current", user=user)).status == 204
    assert_error(await asyncio.wait_for(poll, 5.0), 401, "unauthorized")


async def _longpolls_held(api: Api, count: int) -> bool:
    return await metric(api, "courier_longpolls_held") >= count


async def test_concurrent_registrations_of_one_name_make_one_account(api: Api) -> None:
    name = unique("race")
    body = {"username": name, "password": PASSWORD}
    replies = await asyncio.gather(
        *[api.call("POST", "/v1/users", json_body=body) for _ in range(6)]
    )
    assert sorted(r.status for r in replies) == [201] + [409] * 5
    for r in replies:
        if r.status == 409:
            assert_error(r, 409, "username_taken")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic x"}])
async def test_calls_without_a_valid_token_are_401(api: Api, headers: dict[str, str]) -> None:
    for method, path, body in ENDPOINTS:
        r = await api.call(method, path, json_body=body, headers=headers)
        assert_error(r, 401, "unauthorized")


async def test_an_invented_token_is_401(api: Api) -> None:
    headers = {"Authorization": "Bearer " + "A" * 43}
    r = await api.call("GET", "/v1/events", headers=headers)
    assert_error(r, 401, "unauthorized")
    assert r.headers.get("WWW-Authenticate", "").startswith("Bearer")


async def test_tokens_and_accounts_survive_a_restart(api: Api, server: Server) -> None:
    alice, bob = await api.user(), await api.user()
    gone = await api.login(alice.name)
    assert (await api.send(alice, bob.name, "before the restart", "r-1")).status == 201
    assert (await api.call("DELETE", "/v1/sessions/current", user=gone)).status == 204
    settings = server.settings
    await server.stop()
    again = Server(settings)
    await again.start()
    try:
        after = Api(again.url, api.http)
        r = await after.events(bob)
        assert r.status == 200
        assert [e["body"] for e in r.body["events"]] == ["before the restart"]
        assert (await after.call("GET", "/v1/conversations", user=alice)).status == 200
        assert_error(await after.call("GET", "/v1/events", user=gone), 401, "unauthorized")
        # The retried send is still recognised after the restart.
        retry = await after.send(alice, bob.name, "before the restart", "r-1")
        assert retry.status == 200
        # So is the list of sessions.
        listed = await after.call("GET", "/v1/sessions", user=alice)
        assert [s["current"] for s in listed.body["sessions"]] == [True]
        assert await after.login(alice.name)
    finally:
        await again.stop()


# ---- listing and ending sessions ----------------------------------------------------------------
SESSION_FIELDS = {"id", "created_ts", "last_used_ts", "user_agent", "current"}


async def login_as(api: Api, name: str, agent: str) -> User:
    body = {"username": name, "password": PASSWORD}
    r = await api.call("POST", "/v1/sessions", json_body=body, headers={"User-Agent": agent})
    assert r.status == 201, r
    return User(name, r.body["token"])


async def sessions_of(api: Api, user: User) -> list[dict[str, Any]]:
    r = await api.call("GET", "/v1/sessions", user=user)
    assert r.status == 200, r
    assert set(r.body) == {"sessions"}
    listed: list[dict[str, Any]] = r.body["sessions"]
    return listed


async def test_sessions_lists_the_callers_sessions_newest_first(api: Api) -> None:
    name = unique("sess")
    await api.call("POST", "/v1/users", json_body={"username": name, "password": PASSWORD})
    started = now_ms()
    await login_as(api, name, "Courier phone/2.1")
    await asyncio.sleep(0.005)  # distinct times
    laptop = await login_as(api, name, "Mozilla/5.0 (laptop)")
    stranger = await api.user()

    listed = await sessions_of(api, laptop)
    assert [s["user_agent"] for s in listed] == ["Mozilla/5.0 (laptop)", "Courier phone/2.1"]
    assert [s["current"] for s in listed] == [True, False]
    for s in listed:
        assert set(s) == SESSION_FIELDS
        assert re.fullmatch(r"[0-9a-f]{16}", s["id"]), s
        assert s["id"] not in laptop.token
        assert started <= s["created_ts"] <= s["last_used_ts"] <= now_ms()
    assert listed[0]["created_ts"] > listed[1]["created_ts"]
    theirs = await sessions_of(api, stranger)
    assert len(theirs) == 1 and theirs[0]["id"] not in {s["id"] for s in listed}


async def test_a_long_user_agent_is_cut_to_256_characters(api: Api) -> None:
    user = await api.user()
    await login_as(api, user.name, "a" * 2000)
    agents = [s["user_agent"] for s in await sessions_of(api, user)]
    assert agents[0] == "a" * 256
    assert agents[1].startswith("Python/")  # aiohttp's own, from the first login


async def test_deleting_a_session_ends_that_token_only(api: Api) -> None:
    user = await api.user()
    other = await api.login(user.name)
    (mine,) = [s["id"] for s in await sessions_of(api, user) if s["current"]]
    (theirs,) = [s["id"] for s in await sessions_of(api, other) if s["current"]]

    r = await api.call("DELETE", f"/v1/sessions/{theirs}", user=user)
    assert r.status == 204 and r.body is None
    for method, path, body in ENDPOINTS:
        assert_error(await api.call(method, path, user=other, json_body=body), 401, "unauthorized")
    assert_error(await api.call("GET", f"/v1/ws?token={other.token}"), 401, "unauthorized")
    assert [s["id"] for s in await sessions_of(api, user)] == [mine]

    again = await api.call("DELETE", f"/v1/sessions/{theirs}", user=user)
    assert_error(again, 404, "unknown_session")
    # Its own id ends the caller's session, as a logout does.
    assert (await api.call("DELETE", f"/v1/sessions/{mine}", user=user)).status == 204
    assert_error(await api.call("GET", "/v1/sessions", user=user), 401, "unauthorized")


async def test_another_users_session_is_404_and_keeps_working(api: Api) -> None:
    alice, mallory = await api.user(), await api.user()
    (target,) = [s["id"] for s in await sessions_of(api, alice)]
    r = await api.call("DELETE", f"/v1/sessions/{target}", user=mallory)
    assert_error(r, 404, "unknown_session")
    assert_error(
        await api.call("DELETE", "/v1/sessions/0123456789abcdef", user=mallory),
        404,
        "unknown_session",
    )
    assert [s["id"] for s in await sessions_of(api, alice)] == [target]


@pytest.mark.parametrize(
    "session_id",
    ["0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0", "x" * 300, "%00" * 16, "-1"],
    ids=lambda v: v[:20],
)
async def test_malformed_session_ids_are_400(api: Api, session_id: str) -> None:
    user = await api.user()
    r = await api.call("DELETE", f"/v1/sessions/{session_id}", user=user)
    assert_error(r, 400, "bad_request")
    assert len(await sessions_of(api, user)) == 1


async def test_deleting_a_session_closes_its_live_websockets(api: Api) -> None:
    alice = await api.user()
    phone = await api.login(alice.name)
    (phone_id,) = [s["id"] for s in await sessions_of(api, phone) if s["current"]]
    doomed = [(await connect(api, phone))[0] for _ in range(2)]
    survivor, _ = await connect(api, alice)
    assert (await api.call("DELETE", f"/v1/sessions/{phone_id}", user=alice)).status == 204
    for ws in doomed:
        error = await ws.recv()
        assert error["type"] == "error" and error["code"] == "unauthorized"
        code, _ = await ws.closed()
        assert code == 1008
    await survivor.send({"type": "ping"})
    assert await survivor.recv() == {"type": "pong"}
    await survivor.close()


async def test_a_session_unused_for_the_idle_period_is_refused(api: Api, server: Server) -> None:
    stale = await api.user()
    server.accounts.clock = lambda: now_ms() + 31 * DAY_MS  # a month without using it
    r = await api.call("GET", "/v1/events", user=stale)
    assert_error(r, 401, "unauthorized")
    assert "expired" in r.body["error"]["message"]
    assert_error(await api.call("GET", f"/v1/ws?token={stale.token}"), 401, "unauthorized")
    fresh = await api.login(stale.name)
    assert [s["current"] for s in await sessions_of(api, fresh)] == [True]

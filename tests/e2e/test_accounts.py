"""Accounts and sessions: registration, login, logout and durable tokens."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from courier.server import Server
from tests.e2e.support import assert_error, eventually, metric
from tests.helpers import PASSWORD, Api, unique


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
        assert await after.login(alice.name)
    finally:
        await again.stop()

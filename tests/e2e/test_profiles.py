"""Profiles and finding people over HTTP (PROTOCOL.md, "Profiles and finding people")."""

from __future__ import annotations

import pytest

from tests.e2e.support import assert_error
from tests.helpers import Api, User


async def me(api: Api, user: User) -> dict[str, str]:
    r = await api.call("GET", "/v1/me", user=user)
    assert r.status == 200, r
    assert set(r.body) == {"username", "display_name"}
    return r.body  # type: ignore[no-any-return]


async def search(api: Api, user: User, query: str) -> list[dict[str, str]]:
    r = await api.call("GET", f"/v1/users?{query}", user=user)
    assert r.status == 200, r
    return r.body["users"]  # type: ignore[no-any-return]


async def test_a_display_name_is_set_shown_and_found(api: Api) -> None:
    alice = await api.user("alice")
    bob = await api.user("bob")
    assert await me(api, alice) == {"username": "alice", "display_name": ""}
    r = await api.call("PATCH", "/v1/me", user=alice, json_body={"display_name": "Alice Liddell"})
    assert r.status == 200 and r.body == {"username": "alice", "display_name": "Alice Liddell"}
    assert await me(api, alice) == r.body
    for q in ("q=ali", "q=Lid", "q=alice%20l", "q=A"):
        assert await search(api, bob, q) == [r.body], q
    r = await api.call("PATCH", "/v1/me", user=alice, json_body={"display_name": ""})
    assert r.body["display_name"] == ""
    assert await search(api, bob, "q=lid") == []


async def test_search_is_bounded_by_limit(api: Api) -> None:
    caller = await api.user("caller")
    for i in range(12):
        await api.user(f"team{i:02d}")
    assert len(await search(api, caller, "q=team")) == 10  # the default
    assert len(await search(api, caller, "q=team&limit=3")) == 3
    assert len(await search(api, caller, "q=team&limit=99999999999999999999")) == 12


@pytest.mark.parametrize(
    "query", ["", "q=", "q=" + "x" * 33, "q=%20%20", "q=a&limit=0", "q=a&limit=x"]
)
async def test_bad_searches_are_400(api: Api, query: str) -> None:
    user = await api.user()
    r = await api.call("GET", f"/v1/users?{query}", user=user)
    assert_error(r, 400, "bad_request")


@pytest.mark.parametrize(
    "body", [{"display_name": "x" * 65}, {"display_name": "bell\u0007"}, {"display_name": 5}, {}]
)
async def test_bad_display_names_are_400(api: Api, body: object) -> None:
    user = await api.user()
    r = await api.call("PATCH", "/v1/me", user=user, json_body=body)
    assert_error(r, 400, "bad_request")


async def test_profiles_need_a_token(api: Api) -> None:
    for method, path in (("GET", "/v1/me"), ("GET", "/v1/users?q=a")):
        assert_error(await api.call(method, path), 401, "unauthorized")

"""Registration and login are throttled per source address and failed logins per account,
without locking the account's owner out. Addresses are given as X-Forwarded-For through a
trusted proxy (loopback here), the way a server behind nginx sees them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.e2e.support import assert_error
from tests.helpers import PASSWORD, Api, unique

BEHIND_PROXY = {"trusted_proxies": "127.0.0.1"}


def client(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


async def register(api: Api, name: str, address: str) -> Any:
    body = {"username": name, "password": PASSWORD}
    return await api.call("POST", "/v1/users", json_body=body, headers=client(address))


async def login(api: Api, name: str, password: str, address: str) -> Any:
    body = {"username": name, "password": password}
    return await api.call("POST", "/v1/sessions", json_body=body, headers=client(address))


@pytest.mark.parametrize(
    "settings_overrides",
    [{**BEHIND_PROXY, "register_rate_per_address": 0.01, "register_burst_per_address": 3}],
    ids=["register-3"],
)
async def test_registrations_are_throttled_per_address(api: Api) -> None:
    for _ in range(3):
        assert (await register(api, unique("reg"), "198.51.100.7")).status == 201
    r = await register(api, unique("reg"), "198.51.100.7")
    assert_error(r, 429, "rate_limited")
    assert int(r.headers["Retry-After"]) >= 1
    assert (await register(api, unique("reg"), "198.51.100.8")).status == 201  # another address


@pytest.mark.parametrize(
    "settings_overrides",
    [{**BEHIND_PROXY, "login_rate_per_address": 0.01, "login_burst_per_address": 5}],
    ids=["login-5"],
)
async def test_login_attempts_are_throttled_per_address(api: Api) -> None:
    name = unique("lim")
    assert (await register(api, name, "198.51.100.1")).status == 201
    for _ in range(5):
        assert_error(await login(api, name, "wrong password", "203.0.113.9"), 401)
    r = await login(api, name, PASSWORD, "203.0.113.9")
    assert_error(r, 429, "rate_limited")
    assert "Retry-After" in r.headers
    assert (await login(api, name, PASSWORD, "203.0.113.10")).status == 201


@pytest.mark.parametrize(
    "settings_overrides",
    [
        {
            **BEHIND_PROXY,
            "login_failure_rate_per_user": 0.01,
            "login_failure_burst_per_user": 3,
        }
    ],
    ids=["failures-3"],
)
async def test_failed_logins_spread_over_addresses_are_throttled_but_the_owner_gets_in(
    api: Api,
) -> None:
    name = unique("own")
    assert (await register(api, name, "198.51.100.2")).status == 201
    assert (await login(api, name, PASSWORD, "192.0.2.1")).status == 201  # the owner's address
    for i in range(3):  # a guesser, from a new address each time
        assert_error(await login(api, name, "guess", f"203.0.113.{i + 20}"), 401)
    assert_error(await login(api, name, "guess", "203.0.113.99"), 429, "rate_limited")
    assert_error(await login(api, name, PASSWORD, "203.0.113.98"), 429, "rate_limited")
    # The owner, from where they logged in before, is not locked out by the guesser.
    assert (await login(api, name, PASSWORD, "192.0.2.1")).status == 201
    # Another account is not affected at all.
    other = unique("own")
    assert (await register(api, other, "198.51.100.3")).status == 201
    assert (await login(api, other, PASSWORD, "203.0.113.99")).status == 201


@pytest.mark.parametrize(
    "settings_overrides",
    [
        {
            **BEHIND_PROXY,
            "login_failure_rate_per_user": 0.01,
            "login_failure_burst_per_user": 3,
        }
    ],
    ids=["failures-3"],
)
async def test_guesses_made_at_the_same_moment_share_the_account_budget(api: Api) -> None:
    """Concurrent guesses cannot all pass the check before any has failed: at most the
    burst is even tried; the rest are refused before their password is hashed."""
    name = unique("con")
    assert (await register(api, name, "198.51.100.4")).status == 201
    guesses = [login(api, name, "guess", f"203.0.113.{i + 100}") for i in range(20)]
    statuses = sorted(r.status for r in await asyncio.gather(*guesses))
    assert statuses.count(401) <= 3 and statuses.count(429) >= 17, statuses


@pytest.mark.parametrize(
    "settings_overrides",
    [{"register_rate_per_address": 0.01, "register_burst_per_address": 2}],
    ids=["untrusted"],
)
async def test_forwarded_headers_from_an_untrusted_peer_are_ignored(api: Api) -> None:
    """Without trusted_proxies, X-Forwarded-For is the client's own claim: not believed."""
    assert (await register(api, unique("fwd"), "198.51.100.50")).status == 201
    assert (await register(api, unique("fwd"), "198.51.100.51")).status == 201
    assert_error(await register(api, unique("fwd"), "198.51.100.52"), 429, "rate_limited")

"""GET /v1/events: pull, paging, limits and long polling."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.e2e.support import assert_error, connect, eventually, metric, recv_sent
from tests.helpers import Api, User


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"send_rate": 100_000.0, "send_burst": 100_000}


async def fill(api: Api, sender: User, to: User, count: int) -> None:
    """`count` messages from sender to `to`, pipelined on one WebSocket in windows of 500
    (a connection may have at most `ws_pending_sends_max` sends waiting for the store)."""
    ws, _ = await connect(api, sender)
    answers: list[dict[str, Any]] = []
    for start in range(0, count, 500):
        window = range(start, min(start + 500, count))
        for i in window:
            await ws.send({"type": "send", "to": to.name, "body": f"n{i}", "client_id": f"f-{i}"})
        answers += await recv_sent(ws, len(window), timeout=60.0)
    assert all(a["type"] == "sent" for a in answers), [a for a in answers if a["type"] != "sent"]
    await ws.close()


async def test_pull_returns_events_after_s_oldest_first(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    for i in range(5):
        await api.send(alice, bob.name, f"m{i}", f"c{i}")
    r = await api.events(bob, 2)
    assert r.status == 200
    assert [e["seq"] for e in r.body["events"]] == [3, 4, 5]
    assert [e["body"] for e in r.body["events"]] == ["m2", "m3", "m4"]
    assert r.body["last_seq"] == 5 and r.body["more"] is False


async def test_after_defaults_to_zero(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    await api.send(alice, bob.name, "hi", "c1")
    r = await api.call("GET", "/v1/events", user=bob)
    assert r.status == 200
    assert [e["seq"] for e in r.body["events"]] == [1]
    assert r.body["last_seq"] == 1


async def test_last_seq_is_s_when_there_is_nothing_new(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    empty = await api.events(bob, 0)
    assert empty.body == {"events": [], "last_seq": 0, "more": False}
    await api.send(alice, bob.name, "hi", "c1")
    assert (await api.events(bob, 1)).body == {"events": [], "last_seq": 1, "more": False}
    # An `after` beyond the head is answered the same way.
    assert (await api.events(bob, 50)).body == {"events": [], "last_seq": 50, "more": False}


async def test_limit_defaults_to_100_and_more_marks_the_cut(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    await fill(api, alice, bob, 150)
    r = await api.events(bob, 0)
    assert len(r.body["events"]) == 100
    assert r.body["more"] is True and r.body["last_seq"] == 100
    rest = await api.events(bob, r.body["last_seq"])
    assert [e["seq"] for e in rest.body["events"]] == list(range(101, 151))
    assert rest.body["more"] is False and rest.body["last_seq"] == 150


async def test_limit_is_capped_at_1000(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    await fill(api, alice, bob, 1100)
    r = await api.events(bob, 0, limit=5000)
    assert r.status == 200
    assert [e["seq"] for e in r.body["events"]] == list(range(1, 1001))
    assert r.body["more"] is True and r.body["last_seq"] == 1000
    rest = await api.events(bob, 1000, limit=1000)
    assert [e["seq"] for e in rest.body["events"]] == list(range(1001, 1101))
    assert rest.body["more"] is False
    # Pipelined sends of one connection are stored in the order they were sent.
    bodies = [e["body"] for e in r.body["events"] + rest.body["events"]]
    assert bodies == [f"n{i}" for i in range(1100)]


async def test_more_is_false_when_the_limit_fits_exactly(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    for i in range(3):
        await api.send(alice, bob.name, f"m{i}", f"c{i}")
    assert (await api.events(bob, 0, limit=3)).body["more"] is False
    cut = await api.events(bob, 0, limit=2)
    assert cut.body["more"] is True and cut.body["last_seq"] == 2


async def test_long_poll_answers_as_soon_as_an_event_exists(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    started = time.monotonic()
    poll = asyncio.create_task(api.events(bob, 0, wait=20))
    await eventually(lambda: _held(api, 1))
    assert not poll.done()
    await api.send(alice, bob.name, "wake up", "c1")
    r = await asyncio.wait_for(poll, 5.0)
    assert time.monotonic() - started < 5.0
    assert r.status == 200
    assert [e["body"] for e in r.body["events"]] == ["wake up"]
    assert r.body["last_seq"] == 1
    assert await metric(api, "courier_longpolls_held") == 0


async def test_long_poll_answers_at_once_when_events_are_there(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    await api.send(alice, bob.name, "already here", "c1")
    started = time.monotonic()
    r = await api.events(bob, 0, wait=30)
    assert time.monotonic() - started < 2.0
    assert [e["seq"] for e in r.body["events"]] == [1]


async def test_long_poll_times_out_empty_with_last_seq_s(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    await api.send(alice, bob.name, "old", "c1")
    started = time.monotonic()
    r = await api.events(bob, 1, wait=0.4)
    elapsed = time.monotonic() - started
    assert r.status == 200
    assert r.body == {"events": [], "last_seq": 1, "more": False}
    assert 0.3 <= elapsed < 3.0


async def test_a_long_poll_is_not_woken_by_other_users_events(api: Api) -> None:
    alice, bob, carol = await api.user(), await api.user(), await api.user()
    poll = asyncio.create_task(api.events(bob, 0, wait=0.6))
    await eventually(lambda: _held(api, 1))
    await api.send(alice, carol.name, "not for bob", "c1")
    r = await asyncio.wait_for(poll, 5.0)
    assert r.body == {"events": [], "last_seq": 0, "more": False}


async def test_wait_above_60_is_served_not_refused(api: Api) -> None:
    alice, bob = await api.user(), await api.user()
    await api.send(alice, bob.name, "first", "c1")
    r = await api.events(bob, 0, wait=120)
    assert r.status == 200 and [e["seq"] for e in r.body["events"]] == [1]
    poll = asyncio.create_task(api.events(bob, 1, wait=120))
    await eventually(lambda: _held(api, 1))
    await api.send(alice, bob.name, "second", "c2")
    r = await asyncio.wait_for(poll, 5.0)
    assert r.status == 200 and [e["body"] for e in r.body["events"]] == ["second"]


@pytest.mark.parametrize(
    "query",
    [
        "after=-1",
        "after=x",
        "after=1.5",
        "limit=0",
        "limit=-3",
        "limit=many",
        "wait=-1",
        "wait=abc",
        "wait=nan",
    ],
)
async def test_bad_parameters_are_400(api: Api, query: str) -> None:
    bob = await api.user()
    r = await api.call("GET", f"/v1/events?{query}", user=bob)
    assert_error(r, 400, "bad_request")


async def test_events_is_get_only(api: Api) -> None:
    bob = await api.user()
    r = await api.call("POST", "/v1/events", user=bob, json_body={})
    assert_error(r, 405, "method_not_allowed")


async def _held(api: Api, count: int) -> bool:
    return await metric(api, "courier_longpolls_held") >= count

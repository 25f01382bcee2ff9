"""Sessions: each login is one, listed with its times and user agent, ended one by one, and
refused once unused for longer than the idle period. Time is a clock the test moves."""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec
import pytest
from argon2 import PasswordHasher

from courier.domain.errors import CourierError
from courier.domain.ops import DeleteToken, PutToken, TouchToken
from courier.domain.shards import shard_of
from courier.metrics import Metrics
from courier.service.accounts import (
    DAY_MS,
    HOUR_MS,
    SESSIONS_MAX,
    Accounts,
    Session,
    hash_token,
    now_ms,
)
from tests.service.conftest import Stack, open_store

PASSWORD = "password1"


class Clock:
    def __init__(self) -> None:
        self.now = now_ms()

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


@pytest.fixture
def clock(stack: Stack) -> Clock:
    c = Clock()
    stack.accounts.clock = c
    return c


async def login(stack: Stack, name: str, agent: str = "") -> tuple[str, Session]:
    token = await stack.accounts.login(name, PASSWORD, user_agent=agent)
    return token, await stack.accounts.authenticate(token)


async def register(stack: Stack, name: str) -> None:
    await stack.accounts.register(name, PASSWORD)


def batches(stack: Stack) -> float:
    """Store commits so far (the batch-size histogram's count)."""
    for family in stack.metrics.store_batch_size.collect():
        for sample in family.samples:
            if sample.name.endswith("_count"):
                return sample.value
    return 0.0


async def refused(stack: Stack, token: str) -> CourierError:
    with pytest.raises(CourierError) as caught:
        await stack.accounts.authenticate(token)
    assert caught.value.status == 401 and caught.value.code == "unauthorized"
    return caught.value


async def test_a_login_is_a_session_with_its_times_and_user_agent(
    stack: Stack, clock: Clock
) -> None:
    await register(stack, "alice")
    _, session = await login(stack, "alice", "Courier/1.0 (phone)")
    (listed,) = await stack.accounts.sessions(session)
    assert listed.id == session.device and len(listed.id) == 16
    assert listed.created_ts == listed.last_used_ts == clock.now
    assert listed.user_agent == "Courier/1.0 (phone)"
    assert listed.current is True


async def test_sessions_are_listed_most_recently_used_first(stack: Stack, clock: Clock) -> None:
    await register(stack, "alice")
    first, a = await login(stack, "alice", "first")
    clock.advance(1000)
    _, b = await login(stack, "alice", "second")
    clock.advance(1000)
    _, c = await login(stack, "alice", "third")
    listed = await stack.accounts.sessions(c)
    assert [s.user_agent for s in listed] == ["third", "second", "first"]
    assert [s.current for s in listed] == [True, False, False]

    clock.advance(2 * HOUR_MS)
    again = await stack.accounts.authenticate(first)  # used again: first in the list
    listed = await stack.accounts.sessions(b)
    assert [s.user_agent for s in listed] == ["first", "third", "second"]
    assert listed[0].last_used_ts == clock.now and listed[0].id == again.device == a.device
    assert [s.current for s in listed] == [False, False, True]


async def test_a_use_within_the_hour_writes_nothing(stack: Stack, clock: Clock) -> None:
    await register(stack, "alice")
    token, session = await login(stack, "alice")
    created = clock.now
    before = batches(stack)
    for _ in range(20):
        clock.advance(HOUR_MS // 40)
        await stack.accounts.authenticate(token)
    assert batches(stack) == before, "a use within the hour must not write"
    record = await stack.store.get_token(session.token_hash)
    assert record is not None and record.last_used == created

    clock.advance(HOUR_MS // 2 + 1)  # now more than an hour after the recorded use
    await stack.accounts.authenticate(token)
    assert batches(stack) > before
    record = await stack.store.get_token(session.token_hash)
    assert record is not None and record.last_used == clock.now
    (listed,) = await stack.accounts.sessions(session)
    assert listed.last_used_ts == clock.now and listed.created_ts == created


async def test_a_session_unused_past_the_idle_period_is_refused_and_deleted(
    stack: Stack, clock: Clock
) -> None:
    await register(stack, "alice")
    stale, gone = await login(stack, "alice", "old laptop")
    clock.advance(29 * DAY_MS)
    fresh, kept = await login(stack, "alice", "phone")
    clock.advance(DAY_MS + 1)  # 30 days and a millisecond after the old one's last use

    error = await refused(stack, stale)
    assert "expired" in error.message
    assert await stack.store.get_token(gone.token_hash) is None
    assert await stack.store.get_session("alice", gone.device) is None
    await refused(stack, stale)  # and stays refused

    session = await stack.accounts.authenticate(fresh)
    assert [s.id for s in await stack.accounts.sessions(session)] == [kept.device]


async def test_used_sessions_never_expire(stack: Stack, clock: Clock) -> None:
    await register(stack, "alice")
    token, _ = await login(stack, "alice")
    for _ in range(10):  # 100 days, used every 10
        clock.advance(10 * DAY_MS)
        await stack.accounts.authenticate(token)


async def test_an_idle_period_of_zero_never_expires(stack: Stack, clock: Clock) -> None:
    forever = Accounts(
        stack.store,
        stack.broker,
        PasswordHasher(time_cost=1, memory_cost=8192),
        session_idle_days=0,
        clock=clock,
    )
    try:
        await forever.register("alice", PASSWORD)
        token = await forever.login("alice", PASSWORD)
        clock.advance(3650 * DAY_MS)
        session = await forever.authenticate(token)
        assert [s.current for s in await forever.sessions(session)] == [True]
    finally:
        forever.close()


async def test_listing_drops_sessions_past_the_idle_period(stack: Stack, clock: Clock) -> None:
    await register(stack, "alice")
    _, old = await login(stack, "alice", "old")
    clock.advance(31 * DAY_MS)
    _, new = await login(stack, "alice", "new")
    assert [s.user_agent for s in await stack.accounts.sessions(new)] == ["new"]
    assert await stack.store.get_token(old.token_hash) is None
    assert [s.id for s in await stack.store.sessions("alice", 10)] == [new.device]


async def test_ending_a_session_revokes_its_token_and_closes_its_connections(
    stack: Stack, clock: Clock
) -> None:
    await register(stack, "alice")
    phone_token, phone = await login(stack, "alice", "phone")
    laptop_token, laptop = await login(stack, "alice", "laptop")
    on_phone = stack.device(phone, "c-phone")
    on_laptop = stack.device(laptop, "c-laptop")

    await stack.accounts.end_session(laptop, phone.device)  # from another session
    assert on_phone.revoked and not on_laptop.revoked
    await refused(stack, phone_token)
    session = await stack.accounts.authenticate(laptop_token)
    assert [s.id for s in await stack.accounts.sessions(session)] == [laptop.device]

    with pytest.raises(CourierError) as again:
        await stack.accounts.end_session(laptop, phone.device)
    assert (again.value.status, again.value.code) == (404, "unknown_session")

    await stack.accounts.end_session(laptop, laptop.device)  # its own: a logout
    assert on_laptop.revoked
    await refused(stack, laptop_token)


@pytest.mark.parametrize("session_id", ["", "current", "0" * 16, "zz" * 8, "a" * 64])
async def test_an_id_that_is_not_one_of_the_callers_sessions_is_404(
    stack: Stack, session_id: str
) -> None:
    await register(stack, "alice")
    _, alice = await login(stack, "alice")
    with pytest.raises(CourierError) as caught:
        await stack.accounts.end_session(alice, session_id)
    assert (caught.value.status, caught.value.code) == (404, "unknown_session")


async def test_another_users_session_cannot_be_ended(stack: Stack) -> None:
    await register(stack, "alice")
    await register(stack, "bob")
    alice_token, alice = await login(stack, "alice")
    _, bob = await login(stack, "bob")
    with pytest.raises(CourierError) as caught:
        await stack.accounts.end_session(bob, alice.device)
    assert caught.value.code == "unknown_session"
    assert await stack.accounts.authenticate(alice_token) == alice
    assert await stack.accounts.sessions(bob) != await stack.accounts.sessions(alice)


async def test_a_user_holds_at_most_100_sessions_the_least_recently_used_go_first(
    stack: Stack, clock: Clock
) -> None:
    await register(stack, "alice")
    for i in range(SESSIONS_MAX + 5):  # as if logged in 105 times, a millisecond apart
        token_hash = hash_token(f"token-{i}")
        await stack.store.submit(
            PutToken(token_hash, "alice", token_hash[:8].hex(), clock.now - 1000 + i, f"agent {i}")
        )
    _, mine = await login(stack, "alice", "mine")
    listed = await stack.accounts.sessions(mine)
    assert len(listed) == SESSIONS_MAX
    assert [s.user_agent for s in listed[:2]] == ["mine", f"agent {SESSIONS_MAX + 4}"]
    assert listed[-1].user_agent == "agent 6"  # the six least recent were ended
    assert len(await stack.store.sessions("alice", 1000)) == SESSIONS_MAX
    for i in range(6):
        await refused(stack, f"token-{i}")
    await stack.accounts.authenticate("token-6")


async def test_the_user_agent_is_bounded_and_printable(stack: Stack) -> None:
    await register(stack, "alice")
    _, long = await login(stack, "alice", "x" * 1000)
    _, odd = await login(stack, "alice", "bad\x00\x1bagent\udcff")
    agents = {s.id: s.user_agent for s in await stack.accounts.sessions(odd)}
    assert agents[long.device] == "x" * 256
    assert agents[odd.device] == "bad  agent?"


async def test_live_connections_keep_their_sessions_in_use(stack: Stack, clock: Clock) -> None:
    await register(stack, "alice")
    token, session = await login(stack, "alice")
    stack.device(session, "c-1")
    for _ in range(40):  # 40 days with a connection open and no request at all
        clock.advance(DAY_MS)
        await stack.accounts.keep_alive(s.token_hash for s in stack.registry.subscribers())
    assert await stack.accounts.keep_alive([session.token_hash]) == 0  # just recorded
    assert await stack.accounts.authenticate(token) == session


async def test_a_touch_never_brings_back_a_deleted_token(stack: Stack, clock: Clock) -> None:
    await register(stack, "alice")
    _, session = await login(stack, "alice")
    h, device = session.token_hash, session.device
    await stack.store.submit(DeleteToken(h, "alice", device))
    await stack.store.submit(TouchToken(h, "alice", device, clock.now + HOUR_MS))
    assert await stack.store.get_token(h) is None
    assert await stack.store.get_session("alice", device) is None
    assert await stack.store.sessions("alice", 10) == []


# ---- tokens written before sessions were listed ----------------------------------------------
async def put_old_token(stack: Stack, kind: str, token: str, user: str, created: int) -> bytes:
    """A token record exactly as the previous version wrote it: no last use, no user agent,
    and no place among its user's sessions."""
    token_hash = hash_token(token)
    device = token_hash[:8].hex()
    if kind == "rocks":
        from courier.adapters import rocks_keys as K
        from courier.adapters.rocks_store import RocksStore

        assert isinstance(stack.store, RocksStore)
        old = {"username": user, "device": device, "created": created}
        stack.store.db.put(K.token_key(token_hash), msgspec.msgpack.encode(old))
    else:
        import asyncpg

        from courier.adapters.pg_store import PgStore

        assert isinstance(stack.store, PgStore)
        conn = await asyncpg.connect(stack.store.servers[stack.store.server_of(token_hash)])
        try:
            await conn.execute(
                "INSERT INTO tokens (token_hash, shard, username, device, created)"
                " VALUES ($1, $2, $3, $4, $5)",
                token_hash,
                shard_of(token_hash),
                user,
                device,
                created,
            )
        finally:
            await conn.close()
    return token_hash


async def forget_format(stack: Stack, kind: str) -> None:
    """Make the embedded store look as the previous version left it."""
    if kind == "rocks":
        from courier.adapters import rocks_keys as K
        from courier.adapters.rocks_store import RocksStore

        assert isinstance(stack.store, RocksStore)
        stack.store.db.delete(K.FORMAT_KEY)


async def test_a_token_in_the_old_format_still_authenticates(
    stack: Stack, store_kind: str, clock: Clock
) -> None:
    await register(stack, "alice")
    created = clock.now - 400 * DAY_MS  # older than any idle period: its last use is unknown
    token_hash = await put_old_token(stack, store_kind, "an old token", "alice", created)
    session = await stack.accounts.authenticate("an old token")
    assert session == Session("alice", token_hash[:8].hex(), token_hash)
    (listed,) = await stack.accounts.sessions(session)
    assert (listed.id, listed.created_ts, listed.last_used_ts) == (
        session.device,
        created,
        clock.now,
    )
    assert listed.current and listed.user_agent == ""
    clock.advance(31 * DAY_MS)  # from now on it expires like any other
    await refused(stack, "an old token")


async def test_a_store_from_before_sessions_lists_its_tokens_after_a_restart(
    stack: Stack, store_kind: str, tmp_path: Path
) -> None:
    await register(stack, "alice")
    created = now_ms() - 400 * DAY_MS
    hashes = [
        await put_old_token(stack, store_kind, f"old {i}", "alice", created + i) for i in range(3)
    ]
    await forget_format(stack, store_kind)
    await stack.store.close()
    stack.store = await open_store(tmp_path / "store", store_kind, Metrics())
    started = now_ms()
    listed = await stack.store.sessions("alice", 10)
    assert sorted(s.token_hash for s in listed) == sorted(hashes)
    for s in listed:
        assert s.id == s.token_hash[:8].hex()
        assert s.created < created + 3 and started - 60_000 <= s.last_used <= now_ms()
        record = await stack.store.get_token(s.token_hash)
        assert record is not None and record.last_used == s.last_used
    assert hashlib.sha256(b"old 0").digest() in hashes

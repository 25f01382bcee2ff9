"""A member server that is unreachable during a group send: the sender hears `sent`, and the
members there get the message, once, when their server is back."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import pytest

pytest.importorskip("asyncpg", reason="the PostgreSQL store needs asyncpg")

from courier.adapters.pg_store import PgStore
from courier.domain.ops import AppendGroupMessage, CreateGroup
from tests.cluster.pg.conftest import create_users, users_on
from tests.cluster.pg.test_unavailable import Proxy


def bodies(rows: list[tuple[int, bytes]]) -> list[str]:
    return [json.loads(e)["body"] for _, e in rows if json.loads(e)["type"] == "message"]


async def test_members_on_a_down_server_get_the_message_when_it_is_back(
    dsns: list[str],
) -> None:
    proxy = Proxy(urlsplit(dsns[1]).port or 0)
    await proxy.start()
    store = PgStore([dsns[0], proxy.dsn(dsns[1])])
    await store.open()
    try:
        gid = next(g for g in ("G" + f"{n:032x}" for n in range(100)) if store.server_of(g) == 0)
        near, far = users_on(store, 0, 2, "ann"), users_on(store, 1, 2, "bob")
        await create_users(store, *near, *far)
        await store.submit(CreateGroup(gid, "g", near[0], (near[1], *far), 1, 100))

        await proxy.cut()
        sent = await store.submit(AppendGroupMessage(near[0], gid, "m1", "c1", 1001, "i1"))
        assert not sent.duplicate
        for user in near:
            assert bodies(await store.events_after(user, 0, 100)) == ["m1"], user

        await proxy.start()
        for _ in range(50):
            try:
                await store.groups.complete_pending(0, age_ms=0)
                if all(bodies(await store.events_after(u, 0, 100)) == ["m1"] for u in far):
                    break
            except Exception:  # the server is still coming back
                pass
            await asyncio.sleep(0.1)
        for user in (*near, *far):
            rows = await store.events_after(user, 0, 100)
            assert bodies(rows) == ["m1"], user
            assert [s for s, _ in rows] == list(range(1, len(rows) + 1))
    finally:
        await store.close()
        await proxy.cut()

"""The RocksDB store's runs of group messages, against a model of plain timelines.

Random interleavings of group messages (three overlapping groups), 1:1 messages, receipts,
membership changes, read markers and reopenings of the store: every user's timeline read
back (whole, and by pages from any point) is exactly the model's, each conversation's
history is its part of the timeline, newest first, and unread counts match."""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from courier.adapters.rocks_store import RocksStore
from courier.domain.ops import (
    AppendGroupMessage,
    AppendMessage,
    AppendReceipt,
    ChangeGroup,
    CreateGroup,
    CreateUser,
    MarkRead,
)

USERS = ["ann", "bob", "cat", "dan"]
GROUPS = ["G" + f"{i:032x}" for i in range(1, 4)]

op_strategy = st.one_of(
    st.tuples(st.just("group"), st.integers(0, 2), st.integers(0, 3)),
    st.tuples(st.just("direct"), st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.just("receipt"), st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.just("toggle"), st.integers(0, 2), st.integers(1, 3)),
    st.tuples(st.just("read"), st.integers(0, 2), st.integers(0, 3)),
    st.tuples(st.just("reopen"), st.just(0), st.just(0)),
)


@dataclass
class Model:
    timelines: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {u: [] for u in USERS}
    )
    members: dict[str, list[str]] = field(default_factory=dict)
    read: dict[tuple[str, str], int] = field(default_factory=dict)

    def append(self, user: str, event: dict[str, Any]) -> None:
        self.timelines[user].append({**event, "seq": len(self.timelines[user]) + 1})

    def conversation(self, user: str, conv: str) -> list[dict[str, Any]]:
        out = []
        for e in self.timelines[user]:
            if e["type"] == "receipt":
                continue
            if conv.startswith("G"):
                if e.get("group") == conv:
                    out.append(e)
            elif "group" not in e and {conv, user} == {e.get("from"), e.get("to")}:
                out.append(e)
        return out

    def unread(self, user: str, gid: str) -> int:
        marker = self.read.get((user, gid), 0)
        return sum(
            1
            for e in self.conversation(user, gid)
            if e["type"] == "message" and e["from"] != user and e["seq"] > marker
        )


def strip(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    keys = ("seq", "type", "from", "to", "group", "body", "action", "member", "peer", "up_to")
    return [tuple(e.get(k) for k in keys) for e in events]


async def run(ops: list[tuple[str, int, int]]) -> None:
    path = tempfile.mkdtemp()
    store = RocksStore(path, sync=False)
    await store.open()
    model = Model()
    for u in USERS:
        await store.submit(CreateUser(u, "x", 1))
    for i, gid in enumerate(GROUPS):  # three overlapping groups of three
        members = [USERS[(i + k) % 4] for k in range(3)]
        await store.submit(CreateGroup(gid, f"g{i}", members[0], tuple(members[1:]), 1, 10))
        model.members[gid] = members
        for u in members:
            model.append(u, {"type": "group", "group": gid, "action": "created", "member": None})
    n = 0
    for kind, a, b in ops:
        n += 1
        if kind == "group":
            gid, sender = GROUPS[a], USERS[b]
            if sender not in model.members[gid]:
                continue
            body = f"m{n}"
            op = AppendGroupMessage(sender, gid, body, f"c{n}", 1, f"id{n}")
            result = await store.submit(op)
            assert dict(zip(result.fanout.members, result.fanout.seqs, strict=True)) == {
                u: len(model.timelines[u]) + 1 for u in model.members[gid]
            }
            for u in model.members[gid]:
                model.append(u, {"type": "message", "from": sender, "group": gid, "body": body})
            again = await store.submit(op)  # a retry: nothing new
            assert again.duplicate and again.seq == result.seq
        elif kind == "direct":
            sender, to = USERS[a], USERS[b]
            if sender == to:
                continue
            body = f"d{n}"
            await store.submit(AppendMessage(sender, to, body, f"c{n}", 1, f"id{n}"))
            event = {"type": "message", "from": sender, "to": to, "body": body}
            model.append(to, event)
            model.append(sender, event)
        elif kind == "receipt":
            owner, peer = USERS[a], USERS[b]
            pub = await store.submit(AppendReceipt(owner, peer, "delivered", n, 1))
            if pub is not None:
                model.append(owner, {"type": "receipt", "peer": peer, "up_to": n})
        elif kind == "toggle":
            gid, user = GROUPS[a], USERS[b]
            owner = model.members[gid][0]
            if user == owner:
                continue
            if user in model.members[gid]:
                await store.submit(ChangeGroup(gid, owner, "remove", 1, user))
                for u in model.members[gid]:
                    model.append(
                        u, {"type": "group", "group": gid, "action": "removed", "member": user}
                    )
                model.members[gid].remove(user)
            else:
                await store.submit(ChangeGroup(gid, owner, "add", 1, user))
                model.members[gid].append(user)
                for u in model.members[gid]:
                    model.append(
                        u, {"type": "group", "group": gid, "action": "added", "member": user}
                    )
        elif kind == "read":
            gid, user = GROUPS[a], USERS[b]
            head = await store.head(user)
            if user in model.members[gid] and head:
                seq = max(1, head - (n % 3))
                await store.submit(MarkRead(user, gid, seq))
                key = (user, gid)
                model.read[key] = max(model.read.get(key, 0), seq)
        else:
            await store.close()
            store = RocksStore(path, sync=False)
            await store.open()
    for u in USERS:
        expected = model.timelines[u]
        assert await store.head(u) == len(expected)
        got = [msgspec.json.decode(e) for _, e in await store.events_after(u, 0, 10_000)]
        assert strip(got) == strip(expected)
        for after in range(0, len(expected), 3):  # pages from any point
            page = await store.events_after(u, after, 4)
            assert [s for s, _ in page] == list(range(after + 1, min(after + 4, len(expected)) + 1))
        for conv in [*GROUPS, *(p for p in USERS if p != u)]:
            history = [msgspec.json.decode(e) for _, e in await store.history(u, conv, None, 500)]
            assert strip(history) == strip(model.conversation(u, conv)[::-1]), (u, conv)
            paged: list[dict[str, Any]] = []
            before = None
            while True:
                rows = await store.history(u, conv, before, 2)
                if not rows:
                    break
                paged += [msgspec.json.decode(e) for _, e in rows]
                before = rows[-1][0]
            assert strip(paged) == strip(history)
        conversations = {c.peer: c for c in await store.conversations(u, 50)}
        for gid in GROUPS:
            if gid in conversations:
                assert conversations[gid].unread == model.unread(u, gid), (u, gid)
                last = msgspec.json.decode(conversations[gid].last)
                assert strip([last]) == strip(model.conversation(u, gid)[-1:])
    await store.close()


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(op_strategy, min_size=1, max_size=40))
def test_runs_read_back_as_plain_timelines(ops: list[tuple[str, int, int]]) -> None:
    asyncio.run(run(ops))


async def test_retention_drops_closed_runs_whole_and_keeps_the_open_one() -> None:
    from courier.domain.ops import Sweep

    store = RocksStore(tempfile.mkdtemp(), sync=False)
    await store.open()
    for u in USERS[:3]:
        await store.submit(CreateUser(u, "x", 1))
    gid = GROUPS[0]
    await store.submit(CreateGroup(gid, "g", "ann", ("bob", "cat"), 1, 10))
    for i in range(3):  # old: a run of three at bob's seqs 2..4
        await store.submit(AppendGroupMessage("ann", gid, f"old{i}", f"o{i}", 10, f"io{i}"))
    await store.submit(AppendMessage("cat", "bob", "direct", "d", 20, "id"))  # bob's seq 5
    for i in range(2):  # new: bob's open run at 6..7
        await store.submit(AppendGroupMessage("ann", gid, f"new{i}", f"n{i}", 1000, f"in{i}"))
    dropped, _ = await store.submit(Sweep(500, "", 10))
    assert dropped > 0
    bodies = [msgspec.json.decode(e).get("body") for _, e in await store.events_after("bob", 0, 99)]
    assert bodies == ["new0", "new1"]
    assert await store.head("bob") == 7
    again = await store.submit(AppendGroupMessage("ann", gid, "old0", "o0", 1, "x"))
    assert not again.duplicate  # the dropped message's dedupe key went with it
    await store.close()


async def test_retention_drops_the_log_of_a_group_everybody_left() -> None:
    """An ended group's log is nobody's group any more: the sweep still finds it through the
    entries it drops."""
    from courier.adapters import rocks_keys as K
    from courier.domain.ops import Sweep

    store = RocksStore(tempfile.mkdtemp(), sync=False)
    await store.open()
    for u in USERS[:2]:
        await store.submit(CreateUser(u, "x", 1))
    gid = GROUPS[1]
    await store.submit(CreateGroup(gid, "g", "ann", ("bob",), 1, 10))
    for i in range(3):
        await store.submit(AppendGroupMessage("ann", gid, f"old{i}", f"o{i}", 10, f"io{i}"))
    for who in ("bob", "ann"):
        await store.submit(ChangeGroup(gid, who, "remove", 10, member=who))
    for u in USERS[:2]:  # a newer entry, so the group's entries are not the newest
        await store.submit(AppendMessage(u, USERS[1] if u == "ann" else "ann", "hi", u, 900, u))

    def log_entries() -> int:
        prefix = K.group_log_prefix(gid)
        it = store._db.iter()
        it.seek(prefix)
        n = 0
        while it.valid() and it.key().startswith(prefix):
            n, _ = n + 1, it.next()
        return n

    assert await store.get_group(gid) is None
    assert log_entries() > 0
    await store.submit(Sweep(500, "", 10))
    assert log_entries() == 0
    for u in USERS[:2]:
        bodies = [msgspec.json.decode(e).get("body") for _, e in await store.events_after(u, 0, 99)]
        assert bodies == ["hi", "hi"], u
    await store.close()

"""Group envelopes over a real nats-server: one NATS message per interested node, whatever
the number of members there, and the watches that decide which nodes are interested."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

pytest.importorskip("nats", reason="nats-py is not installed (pip install nats-py)")

from courier.adapters.nats_broker import group_subject
from courier.domain.groups import GroupState, Member
from courier.metrics import Metrics
from courier.ports import EVENT, GROUP, Envelope
from courier.service.registry import Registry
from tests.cluster.nats.conftest import NodeFactory
from tests.cluster.nats.support import NatsServer, Node, eventually

GID = "G" + "a" * 32


@dataclass(eq=False)
class Conn:
    user: str
    conn_id: str = "c"
    token_hash: bytes = b""
    got: list[Envelope] = field(default_factory=list)

    def deliver(self, envelope: Envelope) -> None:
        self.got.append(envelope)

    def revoke(self) -> None:
        pass


class Groups:
    """The store's answer to "which groups is this user in"."""

    def __init__(self, members: dict[str, list[str]]) -> None:
        self.members = members

    async def user_groups(self, user: str, limit: int) -> list[GroupState]:
        return [
            GroupState(gid, "g", 1, tuple(Member(u, "member", i) for i, u in enumerate(users)))
            for gid, users in self.members.items()
            if user in users
        ][:limit]


def registry(node: Node, groups: Groups) -> Registry:
    reg = Registry(node.broker, Metrics(), 32)
    reg.watch_groups(groups)  # type: ignore[arg-type]
    node.then.append(reg.dispatch)
    return reg


def fanout(members: list[str], first_seq: int = 10) -> Envelope:
    seqs = tuple(range(first_seq, first_seq + len(members)))
    return Envelope(GID, GROUP, 0, b',"type":"message"}', "", 0.0, tuple(members), seqs)


async def test_one_nats_message_per_node_reaches_every_member_once(
    make_node: NodeFactory, nats_server: NatsServer
) -> None:
    a, b, c = await make_node("a"), await make_node("b"), await make_node("c")
    members = [f"user{i:03d}" for i in range(60)]
    groups = Groups({GID: members})
    reg_a, reg_b, reg_c = registry(a, groups), registry(b, groups), registry(c, groups)
    conns_b = [Conn(u) for u in members[:30]]
    conns_c = [Conn(u) for u in members[30:]]
    for conn in conns_b:
        reg_b.add(conn)
    for conn in conns_c:
        reg_c.add(conn)
    await eventually(lambda: b.broker.in_sync() and c.broker.in_sync(), what="group watches")
    await asyncio.wait_for(b.broker.settled(), 5)
    await asyncio.wait_for(c.broker.settled(), 5)
    assert b.broker.subscription_count == 31  # 30 users and the group
    before_b, before_c = b.broker.counters.received, c.broker.counters.received
    a.broker.publish(fanout(members))
    await eventually(lambda: all(conn.got for conn in conns_b + conns_c), what="delivery")
    await asyncio.sleep(0.1)
    assert b.broker.counters.received - before_b == 1  # one message for 30 members
    assert c.broker.counters.received - before_c == 1
    for i, conn in enumerate(conns_b + conns_c):
        events = [e for e in conn.got if e.kind == EVENT]
        assert [e.seq for e in events] == [10 + i]
        assert events[0].data == b'{"seq":%d,"type":"message"}' % (10 + i)
    assert a.broker.counters.group_published == 1
    del reg_a


async def test_the_last_member_leaving_a_node_unsubscribes_it(
    make_node: NodeFactory, nats_server: NatsServer
) -> None:
    b = await make_node("b")
    groups = Groups({GID: ["ann", "bob"]})
    reg = registry(b, groups)
    ann, bob = Conn("ann"), Conn("bob")
    reg.add(ann)
    reg.add(bob)
    await eventually(lambda: group_subject(GID) in b.broker._subs, what="group subscription")
    reg.remove(ann)
    await asyncio.sleep(0.1)
    assert group_subject(GID) in b.broker._subs
    reg.remove(bob)
    await eventually(lambda: group_subject(GID) not in b.broker._subs, what="unsubscribed")


async def test_membership_events_add_and_drop_the_watch(
    make_node: NodeFactory, nats_server: NatsServer
) -> None:
    b = await make_node("b")
    reg = registry(b, Groups({}))
    dan = Conn("dan")
    reg.add(dan)
    await asyncio.sleep(0.1)
    assert group_subject(GID) not in b.broker._subs
    added = b'{"seq":1,"type":"group","group":"%s","action":"added","by":"ann","member":"dan"}'
    reg.dispatch(Envelope("dan", EVENT, 1, added % GID.encode()))
    await eventually(lambda: group_subject(GID) in b.broker._subs, what="watch after added")
    # The new watch took effect: dan's connection is told to catch up from the store.
    await eventually(lambda: any(e.kind != EVENT for e in dan.got), what="resync")
    removed = b'{"seq":2,"type":"group","group":"%s","action":"removed","by":"ann","member":"dan"}'
    reg.dispatch(Envelope("dan", EVENT, 2, removed % GID.encode()))
    await eventually(lambda: group_subject(GID) not in b.broker._subs, what="unwatched")


async def test_a_node_holding_no_member_gets_nothing(
    make_node: NodeFactory, nats_server: NatsServer
) -> None:
    a, b = await make_node("a"), await make_node("b")
    reg = registry(b, Groups({GID: ["ann"]}))
    reg.add(Conn("zed"))  # not a member
    await eventually(lambda: b.broker.in_sync(), what="subscriptions")
    a.broker.publish(fanout(["ann"]))
    await asyncio.sleep(0.3)
    assert b.broker.counters.group_received == 0

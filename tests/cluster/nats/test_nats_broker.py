"""The NATS broker against a real nats-server: two brokers in one process stand in for two nodes."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("nats", reason="nats-py is not installed (pip install nats-py)")

from courier.adapters.nats_broker import shard_subject, user_subject, user_token
from courier.domain.shards import LOGICAL_SHARDS, shard_of
from courier.metrics import Metrics
from courier.ports import EVENT, REVOKE, TYPING, Envelope
from courier.service.registry import Registry
from tests.cluster.nats.conftest import NodeFactory
from tests.cluster.nats.support import NatsServer, Node, eventually

SCHEMES = pytest.mark.parametrize("scheme", ["user", "shard"])


async def synced(*nodes: Node) -> None:
    """Subscriptions made and confirmed by a round trip, so the server routes by them now."""
    await eventually(lambda: all(n.broker.in_sync() for n in nodes), what="subscriptions in place")
    for node in nodes:
        await asyncio.wait_for(node.broker.flush(), 5)


async def roundtrip(sender: Node, receiver: Node, user: str, tag: bytes) -> None:
    """Publish until one envelope tagged `tag` gets through (proves the path is live)."""
    probe = Envelope(user, EVENT, 0, tag)
    for _ in range(200):
        sender.broker.publish(probe)
        await asyncio.sleep(0.05)
        if probe in receiver.got:
            receiver.got = [e for e in receiver.got if e != probe]
            return
    raise AssertionError("no envelope got through")


def same_shard_users(n: int) -> list[str]:
    """`n` distinct valid usernames that all hash onto one logical shard."""
    by_shard: dict[int, list[str]] = {}
    i = 0
    while True:
        name = f"user{i:04d}"
        group = by_shard.setdefault(shard_of(name), [])
        group.append(name)
        if len(group) == n:
            return group
        i += 1


# -- subjects ---------------------------------------------------------------------------------


def test_a_dot_in_a_username_never_splits_the_subject() -> None:
    assert user_subject("ann.lee") == "courier.u.ann~lee"
    assert user_subject("bob_2-x") == "courier.u.bob_2-x"
    assert user_subject("ann.lee").count(".") == 2


def test_anything_but_a_valid_username_is_hex_encoded() -> None:
    for hostile in ("a b", "x.*", "y.>", "z\r\nPUB evil 1", "Émile", ""):
        token = user_token(hostile)
        assert token.startswith("~")
        assert all(c in "~0123456789abcdef" for c in token)
    assert user_token("a b") != user_token("a.b")


def test_shard_subjects_use_the_store_shard_of_the_user() -> None:
    for name in ("alice", "bob.k", "user0001"):
        assert shard_subject(name) == f"courier.s.{shard_of(name)}"
    shards = {int(shard_subject(f"u{i:05d}").rsplit(".", 1)[1]) for i in range(5000)}
    assert shards <= set(range(LOGICAL_SHARDS))


# -- routing ----------------------------------------------------------------------------------


@SCHEMES
async def test_events_typing_and_revocations_reach_the_node_holding_the_user(
    nats_server: NatsServer, make_node: NodeFactory, scheme: str
) -> None:
    a, b = await make_node("a", scheme), await make_node("b", scheme)
    b.broker.watch("ann.lee")
    await synced(a, b)
    sent = [
        Envelope("ann.lee", EVENT, 7, b'{"type":"message"}', skip="c1", t0=1.5),
        Envelope("ann.lee", TYPING, 0, b'{"type":"typing"}'),
        Envelope("ann.lee", REVOKE, 0, b"\x01" * 32),
    ]
    for env in sent:
        a.broker.publish(env)
    await eventually(lambda: len(b.got) == 3, what="three envelopes on b")
    assert b.got == sent
    assert a.got == []


class Device:
    """A connection as the registry sees it: records what it is handed."""

    def __init__(self, user: str, conn_id: str, token_hash: bytes) -> None:
        self.user, self.conn_id, self.token_hash = user, conn_id, token_hash
        self.delivered: list[Envelope] = []
        self.revoked = False

    def deliver(self, envelope: Envelope) -> None:
        self.delivered.append(envelope)

    def revoke(self) -> None:
        self.revoked = True


async def test_the_registry_of_another_node_pushes_and_revokes(
    nats_server: NatsServer, make_node: NodeFactory
) -> None:
    a, b = await make_node("a"), await make_node("b")
    registry = Registry(b.broker, Metrics(), max_per_user=5)
    b.then.append(registry.dispatch)
    phone, laptop = Device("lena", "c1", b"\x01" * 32), Device("lena", "c2", b"\x02" * 32)
    registry.add(phone)  # the first connection of lena on b makes b watch her
    registry.add(laptop)
    await synced(a, b)
    event = Envelope("lena", EVENT, 1, b'{"type":"message"}')
    a.broker.publish(event)
    await eventually(lambda: laptop.delivered == [event] and phone.delivered == [event])
    a.broker.publish(Envelope("lena", REVOKE, 0, b"\x02" * 32))  # logout on the laptop
    await eventually(lambda: laptop.revoked, what="the laptop's connection revoked")
    assert not phone.revoked
    registry.remove(phone)
    registry.remove(laptop)
    await synced(b)
    assert b.broker.subscription_count == 0


@SCHEMES
async def test_after_unwatch_nothing_more_arrives(
    nats_server: NatsServer, make_node: NodeFactory, scheme: str
) -> None:
    a, b = await make_node("a", scheme), await make_node("b", scheme)
    b.broker.watch("bob")
    b.broker.watch("carol")
    await synced(a, b)
    b.broker.unwatch("bob")
    await synced(b)
    a.broker.publish(Envelope("bob", EVENT, 1, b"lost"))
    await roundtrip(a, b, "carol", b"probe")  # anything for bob sent before this is in by now
    assert b.got == []
    assert b.broker.subscription_count == 1


async def test_per_user_subjects_send_a_node_nothing_it_does_not_hold(
    nats_server: NatsServer, make_node: NodeFactory
) -> None:
    held, other = same_shard_users(2)
    a, b = await make_node("a", "user"), await make_node("b", "user")
    b.broker.watch(held)
    await synced(a, b)
    a.broker.publish(Envelope(other, EVENT, 1, b"not for b"))
    await roundtrip(a, b, held, b"probe")
    assert b.got == []
    assert b.broker.counters.received == 1  # only the probe crossed the wire
    assert b.broker.counters.filtered == 0


async def test_per_shard_subjects_filter_other_users_of_the_shard_locally(
    nats_server: NatsServer, make_node: NodeFactory
) -> None:
    held, other = same_shard_users(2)
    a, b = await make_node("a", "shard"), await make_node("b", "shard")
    b.broker.watch(held)
    await synced(a, b)
    a.broker.publish(Envelope(other, EVENT, 1, b"not for b"))
    await roundtrip(a, b, held, b"probe")
    assert b.got == []
    assert b.broker.counters.filtered == 1
    assert b.broker.subscription_count == 1


@SCHEMES
async def test_shard_subscription_lives_while_any_user_of_the_shard_is_held(
    nats_server: NatsServer, make_node: NodeFactory, scheme: str
) -> None:
    u1, u2 = same_shard_users(2)
    b = await make_node("b", scheme)
    b.broker.watch(u1)
    b.broker.watch(u2)
    await synced(b)
    assert b.broker.subscription_count == (1 if scheme == "shard" else 2)
    b.broker.unwatch(u1)
    await synced(b)
    assert b.broker.subscription_count == 1
    b.broker.unwatch(u2)
    await synced(b)
    assert b.broker.subscription_count == 0


async def test_a_node_delivers_its_own_users_locally_exactly_once(
    nats_server: NatsServer, make_node: NodeFactory
) -> None:
    a, b = await make_node("a"), await make_node("b")
    a.broker.watch("dora")
    b.broker.watch("dora")  # the same user on two devices, one per node
    await synced(a, b)
    env = Envelope("dora", EVENT, 3, b"hi")
    a.broker.publish(env)
    assert a.got == [env]  # at once, without a trip through NATS
    await eventually(lambda: b.got == [env], what="the copy on b")
    await asyncio.sleep(0.2)
    assert a.got == [env]  # no echo of our own publish


async def test_a_failing_sink_does_not_end_the_subscription(
    nats_server: NatsServer, make_node: NodeFactory
) -> None:
    a, b = await make_node("a"), await make_node("b")
    calls: list[Envelope] = []

    def failing(env: Envelope) -> None:
        calls.append(env)
        if env.seq == 1:
            raise RuntimeError("boom")

    b.then.append(failing)
    b.broker.watch("eve")
    await synced(a, b)
    a.broker.publish(Envelope("eve", EVENT, 1, b"first"))
    a.broker.publish(Envelope("eve", EVENT, 2, b"second"))
    await eventually(lambda: len(calls) == 2, what="both envelopes")
    assert b.broker.counters.sink_errors == 1


# -- NATS unreachable -------------------------------------------------------------------------


async def test_nats_down_at_start_then_up(nats_down: NatsServer, make_node: NodeFactory) -> None:
    a, b = await make_node("a"), await make_node("b")  # start() returns with nothing to reach
    b.broker.watch("fred")
    await asyncio.sleep(0.3)
    assert not a.broker.healthy and not b.broker.healthy
    assert a.backend_up() == 0
    a.broker.publish(Envelope("fred", EVENT, 1, b"lost"))  # neither raises nor blocks
    assert a.broker.counters.dropped_disconnected == 1

    nats_down.start()
    await eventually(lambda: a.broker.healthy and b.broker.healthy, what="both connected")
    # The gauge follows in nats-py's reconnected callback, a moment after the connection.
    await eventually(lambda: a.backend_up() == 1, what="the gauge says up")
    await synced(b)  # the watch made while never connected is now a subscription
    env = Envelope("fred", EVENT, 2, b"after")
    a.broker.publish(env)
    await eventually(lambda: b.got == [env], what="delivery after NATS came up")


async def test_nats_restart_mid_stream(nats_server: NatsServer, make_node: NodeFactory) -> None:
    a, b = await make_node("a"), await make_node("b")
    b.broker.watch("gina")
    await synced(a, b)
    before = Envelope("gina", EVENT, 1, b"before")
    a.broker.publish(before)
    await eventually(lambda: b.got == [before], what="delivery before the outage")

    nats_server.stop()
    await eventually(lambda: not a.broker.healthy and not b.broker.healthy, what="outage seen")
    await eventually(lambda: b.backend_up() == 0, what="the gauge says down")
    for seq in range(2, 12):
        a.broker.publish(Envelope("gina", EVENT, seq, b"during"))  # dropped, counted
    assert a.broker.counters.dropped_disconnected >= 10
    b.broker.watch("hank")  # a new connection arrives during the outage
    b.broker.unwatch("gina")
    b.broker.watch("gina")

    resyncs = b.resyncs
    nats_server.start()
    await eventually(lambda: a.broker.healthy and b.broker.healthy, what="reconnected")
    await eventually(lambda: b.backend_up() == 1, what="the gauge says up")
    # What was dropped is in the store: the node's connections are told to catch up.
    await eventually(lambda: b.resyncs > resyncs, what="a resync signal after reconnecting")
    await synced(a, b)
    assert b.broker.subscription_count == 2
    b.got.clear()
    after = [Envelope("gina", EVENT, 12, b"after"), Envelope("hank", EVENT, 1, b"new")]
    for env in after:
        a.broker.publish(env)
    await eventually(lambda: set(b.got) == set(after), what="delivery resumed")


async def test_revocation_made_during_an_outage_goes_out_after_it(
    nats_server: NatsServer, make_node: NodeFactory
) -> None:
    a, b = await make_node("a"), await make_node("b")
    b.broker.watch("ivan")
    await synced(a, b)
    nats_server.stop()
    await eventually(lambda: not a.broker.healthy and not b.broker.healthy, what="outage seen")
    revoke = Envelope("ivan", REVOKE, 0, b"\x02" * 32)
    a.broker.publish(revoke)
    a.broker.publish(Envelope("ivan", EVENT, 5, b"dropped"))
    nats_server.start()
    # Sent on a's reconnect and once more a few seconds later, for nodes that reconnect after a.
    await eventually(lambda: revoke in b.got, what="the revocation after the outage")
    assert set(b.got) == {revoke}  # the event was dropped; clients recover it by seq


async def test_a_held_revocation_is_sent_again_for_nodes_that_reconnect_later(
    nats_server: NatsServer, make_node: NodeFactory
) -> None:
    a = await make_node("a", reconnect_wait=1)
    b = await make_node("b", reconnect_wait=3)
    b.broker.watch("kate")
    await synced(a, b)
    nats_server.stop()
    await eventually(lambda: not a.broker.healthy and not b.broker.healthy, what="outage seen")
    await asyncio.sleep(0.5)  # b is now in its 3 s wait between attempts
    revoke = Envelope("kate", REVOKE, 0, b"\x03" * 32)
    a.broker.publish(revoke)
    nats_server.start()
    await eventually(lambda: a.broker.healthy, what="a back")
    assert not b.broker.healthy  # so a's first copy cannot reach b
    await eventually(lambda: revoke in b.got, timeout=15, what="the second copy on b")


async def test_close_while_nats_is_down_returns_promptly(
    nats_down: NatsServer, make_node: NodeFactory
) -> None:
    a = await make_node("a")
    a.broker.watch("jill")
    a.broker.publish(Envelope("jill", EVENT, 1, b"x"))
    await asyncio.wait_for(a.broker.close(), 3)
    assert not a.broker.healthy


@SCHEMES
async def test_presence_questions_are_answered_by_the_other_nodes_holding_the_user(
    nats_server: NatsServer, make_node: NodeFactory, scheme: str
) -> None:
    held, other = same_shard_users(2)
    a, b = await make_node("a", scheme), await make_node("b", scheme)
    b.broker.watch(held)
    a.broker.watch(other)
    await synced(a, b)
    assert await a.broker.held_elsewhere(held)
    assert not await b.broker.held_elsewhere(held)  # only b holds it: b itself does not count
    assert not await b.broker.held_elsewhere(other + "x")
    a.broker.watch(held)
    await synced(a)
    assert await b.broker.held_elsewhere(held)
    b.broker.unwatch(held)
    await synced(b)
    assert not await a.broker.held_elsewhere(held)
    assert b.got == [] and a.got == []  # questions are never delivered as envelopes

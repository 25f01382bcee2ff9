"""The delivery rules under random sends, retries, acks, reads, disconnects and restarts.

Invariants checked after every step, against each real store (embedded RocksDB, and the
PostgreSQL cluster store on two servers, where the three users' timelines are split):
- every user's seq is gap-free from 1;
- a client_id is stored exactly once (in the sender's and the recipient's timelines);
- per-sender order holds in the recipient's timeline;
- every message that got `sent` is there, across restarts;
- a device that reconnects and resyncs after its last seq sees every event once, in order;
- receipts only move forward and never cover more than was sent.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections import defaultdict
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from courier.domain.ops import SendResult
from courier.service.accounts import Session
from tests.cluster.pg.servers import pg_cluster
from tests.service.conftest import Device, Stack, build_stack

USERS = ["ann", "ben", "cat"]
names = st.sampled_from(USERS)


class DeliveryRules(RuleBasedStateMachine):
    kind = "rocks"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = tempfile.mkdtemp(prefix="courier-rules-")
        self.stack: Stack = self.run(build_stack_at(self.dir, self.kind))
        self.sessions: dict[str, Session] = {}
        for name in USERS:
            self.sessions[name] = self.run(self.stack.user(name))
        # Model: what got `sent`, per (sender, client_id), in the order it was sent.
        self.sent: dict[tuple[str, str], SendResult] = {}
        self.sent_order: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.bodies: dict[tuple[str, str], str] = {}
        self.devices: dict[str, Device] = {}
        self.device_cursor: dict[str, int] = {}
        self.receipts_seen: dict[tuple[str, str, str], int] = {}

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.stack.store.close())
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- steps --------------------------------------------------------------------------
    @rule(
        sender=names,
        recipient=names,
        cids=st.lists(st.integers(0, 7), min_size=1, max_size=6),
    )
    def send_pipelined(self, sender: str, recipient: str, cids: list[int]) -> None:
        """Several sends submitted without waiting, some reusing a client_id (retries)."""
        if sender == recipient:
            return
        session = self.sessions[sender]
        planned = [(f"{recipient}-{n}", f"{sender}->{recipient}#{n}") for n in cids]

        async def pipelined() -> list[SendResult]:
            futures = [self.stack.delivery.send(session, recipient, b, c) for c, b in planned]
            return list(await asyncio.gather(*futures))

        for (cid, body), result in zip(planned, self.run(pipelined()), strict=True):
            key = (sender, cid)
            if key in self.sent:
                assert result.duplicate
                original = self.sent[key]
                assert (result.id, result.seq, result.ts) == (
                    original.id,
                    original.seq,
                    original.ts,
                )
            else:
                assert not result.duplicate
                self.sent[key] = result
                self.bodies[key] = body
                self.sent_order[(sender, recipient)].append(cid)

    @rule(user=names, data=st.data())
    def ack(self, user: str, data: st.DataObject) -> None:
        head = self.run(self.stack.store.head(user))
        seq = data.draw(st.integers(0, head))
        self.run(self.stack.delivery.ack(self.sessions[user], seq))

    @rule(user=names, peer=names, data=st.data())
    def read(self, user: str, peer: str, data: st.DataObject) -> None:
        head = self.run(self.stack.store.head(user))
        seq = data.draw(st.integers(0, head))
        self.run(self.stack.delivery.read(self.sessions[user], peer, seq))

    @rule(user=names)
    def connect(self, user: str) -> None:
        """A device (re)connects: it resyncs from its last seq, then goes live."""
        if user in self.devices:
            return
        self.devices[user] = self.stack.device(self.sessions[user], f"dev-{user}")
        cursor = self.device_cursor.get(user, 0)
        rows = self.run(self.stack.store.events_after(user, cursor, 10_000))
        seqs = [seq for seq, _ in rows]
        assert seqs == list(range(cursor + 1, cursor + 1 + len(seqs)))
        if seqs:
            self.device_cursor[user] = seqs[-1]

    @precondition(lambda self: bool(self.devices))
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        user = data.draw(st.sampled_from(sorted(self.devices)))
        dev = self.devices.pop(user)
        self.stack.registry.remove(dev)
        # What it was pushed live continues its cursor gap-free.
        for env in dev.received:
            if env.seq == self.device_cursor.get(user, 0) + 1:
                self.device_cursor[user] = env.seq

    @rule()
    def restart(self) -> None:
        for dev in self.devices.values():
            self.stack.registry.remove(dev)
        self.devices.clear()
        self.run(self.stack.store.close())
        self.stack = self.run(build_stack_at(self.dir, self.kind))
        for name in USERS:
            # Tokens are durable: the same sessions are still valid.
            record = self.run(self.stack.store.get_token(self.sessions[name].token_hash))
            assert record is not None and record.username == name

    # ---- invariants ---------------------------------------------------------------------
    def timeline(self, user: str) -> list[tuple[int, dict[str, Any]]]:
        rows = self.run(self.stack.store.events_after(user, 0, 100_000))
        return [(seq, json.loads(data)) for seq, data in rows]

    @invariant()
    def timelines_hold_the_rules(self) -> None:
        for user in USERS:
            events = self.timeline(user)
            assert [seq for seq, _ in events] == list(range(1, len(events) + 1)), "gap-free"
            assert self.run(self.stack.store.head(user)) == len(events)
            assert all(e["seq"] == seq for seq, e in events)
            messages = [e for _, e in events if e["type"] == "message"]
            keys = [(e["from"], e["client_id"]) for e in messages]
            assert len(keys) == len(set(keys)), "a client_id is stored once per timeline"
            for e in messages:
                key = (e["from"], e["client_id"])
                assert key in self.sent, "nothing appears that was not sent"
                assert e["body"] == self.bodies[key] and e["id"] == self.sent[key].id
                if e["from"] == user:
                    assert e["seq"] == self.sent[key].seq, "sent.seq is the outgoing copy"
            for sender in USERS:
                got = [e["client_id"] for e in messages if e["from"] == sender and e["to"] == user]
                assert got == self.sent_order[(sender, user)], "per-sender order, nothing lost"
            outgoing = [e["client_id"] for e in messages if e["from"] == user]
            expected = [cid for (s, cid) in self.sent if s == user]
            assert sorted(outgoing) == sorted(expected), (
                "every sent message is in the sender's copy"
            )

    @invariant()
    def receipts_move_forward(self) -> None:
        for owner in USERS:
            events = [e for _, e in self.timeline(owner)]
            outgoing = {(e["to"], e["seq"]) for e in events if e["type"] == "message"}
            marks: dict[tuple[str, str], list[int]] = defaultdict(list)
            for e in events:
                if e["type"] == "receipt":
                    marks[(e["peer"], e["status"])].append(e["up_to"])
                    assert (e["peer"], e["up_to"]) in outgoing, "covers a real outgoing message"
            for ups in marks.values():
                assert ups == sorted(set(ups)), "cumulative: strictly increasing, no repeats"


async def build_stack_at(path: str, kind: str) -> Stack:
    from pathlib import Path

    return await build_stack(Path(path), kind)


DeliveryRules.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestDeliveryRules = DeliveryRules.TestCase


class PostgresDeliveryRules(DeliveryRules):
    kind = "postgres"


def test_delivery_rules_postgres() -> None:
    """Fewer examples: every one creates databases and restarts a store on real servers."""
    pg_cluster()  # skips here when PostgreSQL cannot run
    run_state_machine_as_test(
        PostgresDeliveryRules,
        settings=settings(
            max_examples=8,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )

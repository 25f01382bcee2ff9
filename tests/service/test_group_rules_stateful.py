"""The delivery rules with groups: the 1:1 machine's rules and invariants, plus random group
creations, additions (with roles), removals, leaves (the owner's too), renames, pipelined
group sends with retries, sends racing a removal, group read markers and restarts.

Invariants after every step, against each real store:
- every timeline is gap-free from 1, and a client_id is stored once;
- every member's timeline holds exactly the group messages sent while they were a member,
  in send order, and nothing after their removal; a send that raced a removal is in the
  removed member's timeline exactly when the store counted them in (never in part);
- every member, and the member concerned, got each membership event;
- the model of members and roles is the store's (exactly one owner while there are members;
  the longest-standing admin, else member, inherits from an owner who leaves);
- receipts only move forward.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule, run_state_machine_as_test

from courier.domain.errors import CourierError
from courier.domain.ops import SendResult
from courier.service.groups import Groups
from tests.cluster.pg.servers import pg_cluster
from tests.service.test_rules_stateful import USERS, DeliveryRules, names

MAX_MEMBERS = 3  # small, so "group_full" happens too


class GroupRules(DeliveryRules):
    def __init__(self) -> None:
        super().__init__()
        self.groups_service = Groups(self.stack.store, self.stack.delivery, max_members=MAX_MEMBERS)
        # Model: group -> member -> (role, join order), in join order.
        self.members: dict[str, dict[str, tuple[str, int]]] = {}
        self.order: dict[str, int] = {}
        self.gids: list[str] = []
        # (sender, client_id) -> (group, result, the members it went to)
        self.gsent: dict[tuple[str, str], tuple[str, SendResult, tuple[str, ...]]] = {}
        self.expected: dict[tuple[str, str], list[str]] = defaultdict(list)  # (user, gid)
        self.changes: dict[str, list[tuple[str, str, str | None]]] = defaultdict(list)

    # ---- the model's rules (domain.groups, restated) ------------------------------------
    def note_change(
        self, gid: str, action: str, member: str | None, extra: tuple[str, ...] = ()
    ) -> None:
        for user in [*self.members[gid], *extra]:
            self.changes[user].append((gid, action, member))

    def hand_over(self, gid: str) -> None:
        rest = self.members[gid]
        if rest and not any(role == "owner" for role, _ in rest.values()):
            heir = min(rest, key=lambda u: (rest[u][0] != "admin", rest[u][1]))
            rest[heir] = ("owner", rest[heir][1])
            self.note_change(gid, "role", heir)

    # ---- steps --------------------------------------------------------------------------
    @rule(owner=names, others=st.lists(names, max_size=3, unique=True))
    def create_group(self, owner: str, others: list[str]) -> None:
        session = self.sessions[owner]
        invited = [u for u in others if u != owner]
        try:
            state = self.run(self.groups_service.create(session, "g", invited))
        except CourierError as exc:
            assert exc.code == "group_full" and len(invited) + 1 > MAX_MEMBERS
            return
        gid = state.id
        self.gids.append(gid)
        self.members[gid] = {owner: ("owner", 0)}
        for i, user in enumerate(invited, 1):
            self.members[gid][user] = ("member", i)
        self.order[gid] = len(self.members[gid])
        self.note_change(gid, "created", None)

    @precondition(lambda self: bool(self.gids))
    @rule(data=st.data(), by=names, user=names, role=st.sampled_from(["member", "admin", "owner"]))
    def add(self, data: st.DataObject, by: str, user: str, role: str) -> None:
        gid = data.draw(st.sampled_from(self.gids))
        model = self.members[gid]
        try:
            self.run(self.groups_service.add(self.sessions[by], gid, user, role))
        except CourierError as exc:
            actor = model.get(by)
            current = model.get(user)
            assert (
                actor is None
                or actor[0] == "member"
                or (current is None and (role == "owner" or len(model) >= MAX_MEMBERS))
                or (current is not None and current[0] == "owner")
                or (role == "owner" and actor[0] != "owner")
            ), exc
            return
        current = model.get(user)
        if current is None:
            model[user] = (role, self.order[gid])
            self.order[gid] += 1
            self.note_change(gid, "added", user)
        elif current[0] != role:
            model[user] = (role, current[1])
            if role == "owner":
                model[by] = ("admin", model[by][1])
                self.note_change(gid, "role", user)
                self.note_change(gid, "role", by)
            else:
                self.note_change(gid, "role", user)

    @precondition(lambda self: bool(self.gids))
    @rule(data=st.data(), by=names, user=names)
    def remove(self, data: st.DataObject, by: str, user: str) -> None:
        gid = data.draw(st.sampled_from(self.gids))
        model = self.members[gid]
        try:
            self.run(self.groups_service.remove(self.sessions[by], gid, user))
        except CourierError:
            actor, target = model.get(by), model.get(user)
            assert (
                actor is None
                or target is None
                or (by != user and (actor[0] == "member" or target[0] == "owner"))
                or (by != user and target[0] == "admin" and actor[0] != "owner")
            )
            return
        del model[user]
        self.note_change(gid, "left" if by == user else "removed", user, (user,))
        self.hand_over(gid)

    @precondition(lambda self: bool(self.gids))
    @rule(data=st.data(), sender=names, cids=st.lists(st.integers(0, 5), min_size=1, max_size=5))
    def group_send_pipelined(self, data: st.DataObject, sender: str, cids: list[int]) -> None:
        gid = data.draw(st.sampled_from(self.gids))
        session = self.sessions[sender]
        planned = [(f"g{self.gids.index(gid)}-{n}", f"{sender}@{gid[-4:]}#{n}") for n in cids]

        async def pipelined() -> list[Any]:
            futures = [
                self.stack.delivery.send(session, None, body, cid, group=gid)
                for cid, body in planned
            ]
            return list(await asyncio.gather(*futures, return_exceptions=True))

        for (cid, body), result in zip(planned, self.run(pipelined()), strict=True):
            key = (sender, cid)
            if isinstance(result, CourierError):
                assert result.code == "unknown_group" and sender not in self.members[gid]
                assert key not in self.gsent or self.gsent[key][0] != gid
                continue
            if key in self.gsent or key in self.sent:
                assert result.duplicate
                continue
            assert not result.duplicate and result.fanout is not None
            members = result.fanout.members
            assert set(members) == set(self.members[gid])
            self.gsent[key] = (gid, result, members)
            self.bodies[key] = body
            for user in members:
                self.expected[(user, gid)].append(cid)

    @precondition(lambda self: bool(self.gids))
    @rule(data=st.data(), victim=names)
    def send_races_removal(self, data: st.DataObject, victim: str) -> None:
        """A group send and a removal submitted together: either order is fine."""
        gid = data.draw(st.sampled_from(self.gids))
        model = self.members[gid]
        owner = next((u for u, (role, _) in model.items() if role == "owner"), None)
        if owner is None or victim == owner or victim not in model:
            return
        cid = f"race-{len(self.gsent)}"

        async def race() -> tuple[Any, Any]:
            sent = self.stack.delivery.send(self.sessions[owner], None, "race", cid, group=gid)
            removed = self.groups_service.remove(self.sessions[owner], gid, victim)
            got = await asyncio.gather(sent, removed, return_exceptions=True)
            return got[0], got[1]

        result, removal = self.run(race())
        assert not isinstance(result, BaseException) and not isinstance(removal, BaseException)
        members = result.fanout.members
        self.gsent[(owner, cid)] = (gid, result, members)
        self.bodies[(owner, cid)] = "race"
        for user in members:
            self.expected[(user, gid)].append(cid)
        # The removal event goes to the members after it, and to the victim.
        before_removal = set(model)
        del model[victim]
        for user in [*model, victim]:
            self.changes[user].append((gid, "removed", victim))
        assert set(members) in (before_removal, set(model)), "all members or all but the victim"

    @precondition(lambda self: bool(self.gids))
    @rule(data=st.data(), user=names)
    def group_read(self, data: st.DataObject, user: str) -> None:
        gid = data.draw(st.sampled_from(self.gids))
        head = self.run(self.stack.store.head(user))
        seq = data.draw(st.integers(0, head))
        try:
            self.run(self.stack.delivery.read(self.sessions[user], None, seq, gid))
        except CourierError as exc:
            assert exc.code == "unknown_group" and user not in self.members[gid]

    @rule()
    def restart(self) -> None:
        super().restart()
        self.groups_service = Groups(self.stack.store, self.stack.delivery, max_members=MAX_MEMBERS)

    # ---- invariants (the 1:1 ones, aware of groups) -------------------------------------
    @invariant()
    def timelines_hold_the_rules(self) -> None:
        for user in USERS:
            events = self.timeline(user)
            assert [seq for seq, _ in events] == list(range(1, len(events) + 1)), "gap-free"
            assert self.run(self.stack.store.head(user)) == len(events)
            messages = [e for _, e in events if e["type"] == "message"]
            keys = [(e["from"], e["client_id"], e.get("group")) for e in messages]
            assert len(keys) == len(set(keys)), "a client_id is stored once per timeline"
            direct = [e for e in messages if "group" not in e]
            for e in direct:
                key = (e["from"], e["client_id"])
                assert key in self.sent and e["body"] == self.bodies[key]
            for sender in USERS:
                got = [e["client_id"] for e in direct if e["from"] == sender and e["to"] == user]
                assert got == self.sent_order[(sender, user)], "per-sender order, nothing lost"
            for gid in self.gids:
                got = [e["client_id"] for e in messages if e.get("group") == gid]
                assert got == self.expected[(user, gid)], (user, gid)
            for e in messages:
                if "group" in e:
                    key = (e["from"], e["client_id"])
                    gid, result, _ = self.gsent[key]
                    assert e["group"] == gid and e["id"] == result.id
                    if e["from"] == user:
                        assert e["seq"] == result.seq, "sent.seq is the sender's copy"
            changes = [
                (e["group"], e["action"], e["member"]) for _, e in events if e["type"] == "group"
            ]
            assert changes == self.changes[user], user

    @invariant()
    def groups_are_the_model(self) -> None:
        for gid in self.gids:
            state = self.run(self.stack.store.get_group(gid))
            model = self.members[gid]
            if not model:
                assert state is None
                continue
            assert state is not None
            assert {m.username: m.role for m in state.members} == {
                u: role for u, (role, _) in model.items()
            }
            assert [m.role for m in state.members].count("owner") == 1

    @invariant()
    def receipts_move_forward(self) -> None:
        for owner in USERS:
            events = [e for _, e in self.timeline(owner)]
            marks: dict[tuple[str, str, str], list[int]] = defaultdict(list)
            for e in events:
                if e["type"] == "receipt":
                    marks[(e.get("group", ""), e["peer"], e["status"])].append(e["up_to"])
            for ups in marks.values():
                assert ups == sorted(set(ups)), "cumulative: strictly increasing, no repeats"


GroupRules.TestCase.settings = settings(
    max_examples=120,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestGroupRules = GroupRules.TestCase


class PostgresGroupRules(GroupRules):
    kind = "postgres"


def test_group_rules_postgres() -> None:
    """Fewer examples: every one creates databases and restarts a store on real servers."""
    pg_cluster()  # skips here when PostgreSQL cannot run
    run_state_machine_as_test(
        PostgresGroupRules,
        settings=settings(
            max_examples=10,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )

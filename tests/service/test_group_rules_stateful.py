"""The delivery rules with groups: the 1:1 machine's rules and invariants, plus random group
creations, additions (with roles), removals, leaves (the owner's too), renames, pipelined
group sends with retries, sends racing a removal, 1:1 and group read markers, acks and
restarts.

Invariants after every step, against each real store:
- every timeline is gap-free from 1, and a client_id is stored once;
- every member's timeline holds exactly the group messages sent while they were a member,
  in send order, and nothing after their removal; a send that raced a removal is in the
  removed member's timeline exactly when the store counted them in (never in part: the
  group's history as the member sees it is their timeline's group entries, page by page);
- every member, and the member concerned, got each membership event, with its author, role
  and the group's name;
- the model of members, roles and names is the store's and the service's (GET group, the
  list of one's groups; exactly one owner while there are members; the longest-standing
  admin, else member, inherits from an owner who leaves);
- the conversation list: unread counts (groups and 1:1) are the model's, each conversation
  shows its newest entry, most recent first;
- receipts only move forward, name real outgoing messages, and cover every acknowledged
  ack and read marker.
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
GROUP_NAMES = st.sampled_from(["g", "team", "Ünïcode ☃"])
HISTORY_PAGE = 3  # small pages, so paging crosses runs and events
Event = dict[str, Any]
# (group, action, by, member, role, name) of a membership event
ChangeRow = tuple[str, str, str, str | None, str | None, str]


class GroupRules(DeliveryRules):
    def __init__(self) -> None:
        super().__init__()
        self.groups_service = self.new_groups()
        # Model: group -> member -> (role, join order), in join order.
        self.members: dict[str, dict[str, tuple[str, int]]] = {}
        self.order: dict[str, int] = {}
        self.names: dict[str, str] = {}
        self.gids: list[str] = []
        # (sender, client_id) -> (group, result, the members it went to)
        self.gsent: dict[tuple[str, str], tuple[str, SendResult, tuple[str, ...]]] = {}
        self.expected: dict[tuple[str, str], list[str]] = defaultdict(list)  # (user, gid)
        self.changes: dict[str, list[ChangeRow]] = defaultdict(list)
        # Acknowledged read markers, (user, group or peer) -> seq, and acks, user -> seq.
        self.read_marks: dict[tuple[str, str], int] = {}
        self.acked: dict[str, int] = {}

    def new_groups(self) -> Groups:
        """The membership service on the current stack; no rate limit on changes (long runs
        make more changes than a person would)."""
        return Groups(
            self.stack.store,
            self.stack.delivery,
            max_members=MAX_MEMBERS,
            change_rate=1e6,
            change_burst=10**6,
        )

    # ---- the model's rules (domain.groups, restated) ------------------------------------
    def note_change(
        self,
        gid: str,
        action: str,
        by: str,
        member: str | None,
        role: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        row = (gid, action, by, member, role, self.names[gid])
        for user in [*self.members[gid], *extra]:
            self.changes[user].append(row)

    def hand_over(self, gid: str, by: str) -> None:
        rest = self.members[gid]
        if rest and not any(role == "owner" for role, _ in rest.values()):
            heir = min(rest, key=lambda u: (rest[u][0] != "admin", rest[u][1]))
            rest[heir] = ("owner", rest[heir][1])
            self.note_change(gid, "role", by, heir, "owner")

    def add_refusal(self, gid: str, by: str, user: str, role: str) -> str | None:
        """The error code the rules answer an addition (or role change) with, or None."""
        model = self.members[gid]
        actor, current = model.get(by), model.get(user)
        if actor is None:
            return "unknown_group"
        if actor[0] == "member":
            return "forbidden"
        if current is None:
            if role == "owner":
                return "bad_request"
            return "group_full" if len(model) >= MAX_MEMBERS else None
        if current[0] == role:
            return None
        if current[0] == "owner" or (role == "owner" and actor[0] != "owner"):
            return "forbidden"
        return None

    def remove_refusal(self, gid: str, by: str, user: str) -> str | None:
        model = self.members[gid]
        actor, target = model.get(by), model.get(user)
        if actor is None:
            return "unknown_group"
        if target is None:
            return "unknown_member"
        if by != user and (
            actor[0] == "member"
            or target[0] == "owner"
            or (target[0] == "admin" and actor[0] != "owner")
        ):
            return "forbidden"
        return None

    def apply_add(self, gid: str, by: str, user: str, role: str) -> None:
        model = self.members[gid]
        current = model.get(user)
        if current is None:
            model[user] = (role, self.order[gid])
            self.order[gid] += 1
            self.note_change(gid, "added", by, user, role)
        elif current[0] != role:
            model[user] = (role, current[1])
            self.note_change(gid, "role", by, user, role)
            if role == "owner":
                model[by] = ("admin", model[by][1])
                self.note_change(gid, "role", by, by, "admin")

    def apply_remove(self, gid: str, by: str, user: str) -> None:
        del self.members[gid][user]
        self.note_change(gid, "left" if by == user else "removed", by, user, None, (user,))
        self.hand_over(gid, by)

    def note_group_send(
        self, sender: str, cid: str, body: str, gid: str, result: SendResult
    ) -> None:
        """A group send that got `sent`: new, or a retry answered from the original."""
        key = (sender, cid)
        if key in self.gsent or key in self.sent:
            assert result.duplicate, key
            original = self.gsent[key][1] if key in self.gsent else self.sent[key]
            assert (result.id, result.seq) == (original.id, original.seq)
            return
        assert not result.duplicate and result.fanout is not None
        members = result.fanout.members
        assert set(members) == set(self.members[gid])
        assert len(result.fanout.seqs) == len(members)
        self.gsent[key] = (gid, result, members)
        self.bodies[key] = body
        for user in members:
            self.expected[(user, gid)].append(cid)

    def note_send(self, sender: str, recipient: str, cid: str, body: str, result: Any) -> None:
        """A 1:1 send that got `sent` (as the 1:1 machine records it)."""
        key = (sender, cid)
        if key in self.sent or key in self.gsent:
            assert result.duplicate
            original = self.sent[key] if key in self.sent else self.gsent[key][1]
            assert (result.id, result.seq) == (original.id, original.seq)
            return
        assert not result.duplicate
        self.sent[key] = result
        self.bodies[key] = body
        self.sent_order[(sender, recipient)].append(cid)

    def note_read(self, user: str, conversation: str, seq: int) -> None:
        key = (user, conversation)
        self.read_marks[key] = max(self.read_marks.get(key, 0), seq)

    def note_ack(self, user: str, seq: int) -> None:
        self.acked[user] = max(self.acked.get(user, 0), seq)

    # ---- steps --------------------------------------------------------------------------
    @rule(owner=names, others=st.lists(names, max_size=3, unique=True), name=GROUP_NAMES)
    def create_group(self, owner: str, others: list[str], name: str) -> None:
        session = self.sessions[owner]
        invited = [u for u in others if u != owner]
        try:
            state = self.run(self.groups_service.create(session, name, invited))
        except CourierError as exc:
            assert exc.code == "group_full" and len(invited) + 1 > MAX_MEMBERS
            return
        gid = state.id
        self.gids.append(gid)
        self.names[gid] = name
        self.members[gid] = {owner: ("owner", 0)}
        for i, user in enumerate(invited, 1):
            self.members[gid][user] = ("member", i)
        self.order[gid] = len(self.members[gid])
        self.note_change(gid, "created", owner, None)

    @precondition(lambda self: bool(self.gids))
    @rule(data=st.data(), by=names, user=names, role=st.sampled_from(["member", "admin", "owner"]))
    def add(self, data: st.DataObject, by: str, user: str, role: str) -> None:
        self.do_add(data.draw(st.sampled_from(self.gids)), by, user, role)

    def do_add(self, gid: str, by: str, user: str, role: str) -> None:
        refusal = self.add_refusal(gid, by, user, role)
        try:
            self.run(self.groups_service.add(self.sessions[by], gid, user, role))
        except CourierError as exc:
            assert exc.code == refusal, (exc, refusal)
            return
        assert refusal is None
        self.apply_add(gid, by, user, role)

    @precondition(lambda self: bool(self.gids))
    @rule(data=st.data(), by=names, user=names)
    def remove(self, data: st.DataObject, by: str, user: str) -> None:
        self.do_remove(data.draw(st.sampled_from(self.gids)), by, user)

    def do_remove(self, gid: str, by: str, user: str) -> None:
        refusal = self.remove_refusal(gid, by, user)
        try:
            self.run(self.groups_service.remove(self.sessions[by], gid, user))
        except CourierError as exc:
            assert exc.code == refusal, (exc, refusal)
            return
        assert refusal is None
        self.apply_remove(gid, by, user)

    @precondition(lambda self: bool(self.gids))
    @rule(data=st.data(), by=names, name=GROUP_NAMES)
    def rename(self, data: st.DataObject, by: str, name: str) -> None:
        gid = data.draw(st.sampled_from(self.gids))
        actor = self.members[gid].get(by)
        try:
            state = self.run(self.groups_service.rename(self.sessions[by], gid, name))
        except CourierError as exc:
            expected = "unknown_group" if actor is None else "forbidden"
            assert actor is None or actor[0] == "member"
            assert exc.code == expected, exc
            return
        assert actor is not None and actor[0] != "member"
        assert state.name == name
        self.names[gid] = name
        self.note_change(gid, "renamed", by, None)

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
            assert not isinstance(result, BaseException), result
            if key in self.gsent:
                # A retry is answered from the original, whatever group it names now.
                assert result.duplicate
                continue
            self.note_group_send(sender, cid, body, gid, result)

    @rule(
        sender=names,
        recipient=names,
        cids=st.lists(st.integers(0, 7), min_size=1, max_size=6),
    )
    def send_pipelined(self, sender: str, recipient: str, cids: list[int]) -> None:
        """1:1 sends mixed in (some reusing a client_id that named a group message)."""
        if sender == recipient:
            return
        session = self.sessions[sender]
        planned = [(f"{recipient}-{n}", f"{sender}->{recipient}#{n}") for n in cids]

        async def pipelined() -> list[SendResult]:
            futures = [self.stack.delivery.send(session, recipient, b, c) for c, b in planned]
            return list(await asyncio.gather(*futures))

        for (cid, body), result in zip(planned, self.run(pipelined()), strict=True):
            self.note_send(sender, recipient, cid, body, result)

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
        before_removal = set(model)
        self.gsent[(owner, cid)] = (gid, result, members)
        self.bodies[(owner, cid)] = "race"
        for user in members:
            self.expected[(user, gid)].append(cid)
        self.apply_remove(gid, owner, victim)
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
            return
        assert user in self.members[gid]
        self.note_read(user, gid, seq)

    @rule(user=names, peer=names, data=st.data())
    def read(self, user: str, peer: str, data: st.DataObject) -> None:
        head = self.run(self.stack.store.head(user))
        seq = data.draw(st.integers(0, head))
        self.run(self.stack.delivery.read(self.sessions[user], peer, seq))
        self.note_read(user, peer, seq)

    @rule(user=names, data=st.data())
    def ack(self, user: str, data: st.DataObject) -> None:
        head = self.run(self.stack.store.head(user))
        seq = data.draw(st.integers(0, head))
        self.run(self.stack.delivery.ack(self.sessions[user], seq))
        self.note_ack(user, seq)

    @rule()
    def restart(self) -> None:
        super().restart()
        self.groups_service = self.new_groups()

    # ---- invariants (the 1:1 ones, aware of groups) -------------------------------------
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
            direct = [e for e in messages if "group" not in e]
            for e in direct:
                key = (e["from"], e["client_id"])
                assert key in self.sent and e["body"] == self.bodies[key]
                assert e["id"] == self.sent[key].id
                if e["from"] == user:
                    assert e["seq"] == self.sent[key].seq
            for sender in USERS:
                got = [e["client_id"] for e in direct if e["from"] == sender and e["to"] == user]
                assert got == self.sent_order[(sender, user)], "per-sender order, nothing lost"
            outgoing = sorted(e["client_id"] for e in direct if e["from"] == user)
            assert outgoing == sorted(cid for (s, cid) in self.sent if s == user)
            for gid in self.gids:
                got = [e["client_id"] for e in messages if e.get("group") == gid]
                assert got == self.expected[(user, gid)], (user, gid)
            for e in messages:
                if "group" in e:
                    key = (e["from"], e["client_id"])
                    gid, result, _ = self.gsent[key]
                    assert e["group"] == gid and e["id"] == result.id
                    assert e["body"] == self.bodies[key]
                    if e["from"] == user:
                        assert e["seq"] == result.seq, "sent.seq is the sender's copy"
            changes = [
                (e["group"], e["action"], e["by"], e["member"], e["role"], e["name"])
                for _, e in events
                if e["type"] == "group"
            ]
            assert changes == self.changes[user], user

    @invariant()
    def groups_are_the_model(self) -> None:
        for gid in self.gids:
            state = self.run(self.stack.store.get_group(gid))
            model = self.members[gid]
            if not model:
                assert state is None
            else:
                assert state is not None and state.name == self.names[gid]
                assert {m.username: m.role for m in state.members} == {
                    u: role for u, (role, _) in model.items()
                }
                assert [m.role for m in state.members].count("owner") == 1
            for user in USERS:
                session = self.sessions[user]
                if user in model:
                    got = self.run(self.groups_service.get(session, gid))
                    assert got == state
                else:
                    try:
                        self.run(self.groups_service.get(session, gid))
                    except CourierError as exc:
                        assert exc.code == "unknown_group"
                    else:
                        raise AssertionError(f"{user} is no member of {gid}")
        for user in USERS:
            mine = [s.id for s in self.run(self.groups_service.list(self.sessions[user]))]
            assert mine == sorted(g for g in self.gids if user in self.members[g]), user

    @invariant()
    def receipts_move_forward(self) -> None:
        """Receipts only move forward, name real outgoing messages, cover acks and reads."""
        timelines = {user: [e for _, e in self.timeline(user)] for user in USERS}
        marks: dict[str, dict[tuple[str, str, str], int]] = {}
        for owner, events in timelines.items():
            outgoing = {
                (e.get("group", e.get("to")), e["seq"])
                for e in events
                if e["type"] == "message" and e["from"] == owner
            }
            seen: dict[tuple[str, str, str], list[int]] = defaultdict(list)
            for e in events:
                if e["type"] == "receipt":
                    conv = e.get("group", e["peer"])
                    seen[(conv, e["peer"], e["status"])].append(e["up_to"])
                    assert (conv, e["up_to"]) in outgoing, ("a real outgoing message", e)
            for ups in seen.values():
                assert ups == sorted(set(ups)), "cumulative: strictly increasing, no repeats"
            marks[owner] = {k: ups[-1] for k, ups in seen.items()}
        for reader, events in timelines.items():
            acked = self.acked.get(reader, 0)
            for e in events:
                if e["type"] != "message" or e["from"] == reader:
                    continue
                author = e["from"]
                conv = e["group"] if "group" in e else e["to"]  # the receipts' conversation
                author_seq = self.author_seq(e)
                got = marks[author]
                delivered = max(
                    got.get((conv, reader, "delivered"), 0), got.get((conv, reader, "read"), 0)
                )
                if e["seq"] <= acked:
                    assert delivered >= author_seq, ("delivered receipt", reader, e)
                read_up_to = self.read_marks.get((reader, e.get("group", author)), 0)
                if e["seq"] <= read_up_to:
                    assert got.get((conv, reader, "read"), 0) >= author_seq, ("read", reader, e)

    def author_seq(self, e: Event) -> int:
        key = (e["from"], e["client_id"])
        return self.gsent[key][1].seq if "group" in e else self.sent[key].seq

    @invariant()
    def conversations_are_the_model(self) -> None:
        for user in USERS:
            events = [e for _, e in self.timeline(user)]
            newest: dict[str, Event] = {}
            for e in events:
                conv = conversation_of(user, e)
                if conv is not None:
                    newest[conv] = e
            listed = self.run(self.stack.delivery.conversations(self.sessions[user], 50))
            assert sorted(c.peer for c in listed) == sorted(newest), user
            order = sorted(newest, key=lambda c: newest[c]["seq"], reverse=True)
            assert [c.peer for c in listed] == order, "most recent first"
            for c in listed:
                assert json_of(c.last) == newest[c.peer], (user, c.peer)
                mark = self.read_marks.get((user, c.peer), 0)
                unread = sum(
                    1
                    for e in events
                    if e["type"] == "message"
                    and e["from"] != user
                    and conversation_of(user, e) == c.peer
                    and e["seq"] > mark
                )
                assert c.unread == unread, (user, c.peer, c.unread, unread)

    @invariant()
    def group_history_is_the_timeline(self) -> None:
        """GET group messages, page by page, is the member's timeline's group entries."""
        for user in USERS:
            events = [e for _, e in self.timeline(user)]
            for gid in self.gids:
                mine = [e for e in reversed(events) if conversation_of(user, e) == gid]
                pages: list[Event] = []
                before: int | None = None
                try:
                    while True:
                        page, before = self.run(
                            self.stack.delivery.history(
                                self.sessions[user], gid, before, HISTORY_PAGE
                            )
                        )
                        pages += [json_of(data) for _, data in page]
                        assert len(pages) <= len(mine), "no more than the timeline holds"
                        if before is None:
                            break
                except CourierError as exc:
                    assert exc.code == "unknown_group" and not mine, (user, gid, exc)
                    continue
                assert pages == mine, (user, gid)


def conversation_of(user: str, e: Event) -> str | None:
    """The conversation an event of `user`'s timeline belongs to (receipts: none)."""
    if e["type"] == "group":
        return str(e["group"])
    if e["type"] != "message":
        return None
    if "group" in e:
        return str(e["group"])
    return str(e["to"] if e["from"] == user else e["from"])


def json_of(data: bytes) -> Event:
    import json

    event: Event = json.loads(data)
    return event


GroupRules.TestCase.settings = settings(
    max_examples=100,
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

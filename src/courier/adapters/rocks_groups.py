"""Group operations of one RocksDB group commit (mixed into rocks_batch.Batch).

A group message is written once, to the group's log; each member's timeline gets a
reference of a few bytes (kind, the message's place in the log, the group), and the
member's conversation entry, so resync, history and unread counts work as in 1:1. The log
entry and every reference are in the one WriteBatch of the commit: all members or none.
Membership is read under the same single writer, so a send and a removal are ordered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from courier.adapters import rocks_keys as K
from courier.adapters.rocks_lines import Line, Lines
from courier.domain import groups as G
from courier.domain.errors import CourierError, unknown_user
from courier.domain.events import message_tail, with_seq
from courier.domain.names import valid_username
from courier.domain.ops import (
    AppendGroupMessage,
    ChangeGroup,
    CreateGroup,
    GroupFanout,
    GroupResult,
    Published,
    SendResult,
)

if TYPE_CHECKING:
    from rocksdict import Rdict, WriteBatch

_GONE = object()
_state_decoder = msgspec.msgpack.Decoder(G.GroupState)


class GroupCache:
    """Decoded group states, shared by the writer's batches (the writer is the only
    mutator, so a cached state is current); bounded."""

    def __init__(self, max_groups: int = 20_000) -> None:
        self.states: dict[str, G.GroupState] = {}
        self.max_groups = max_groups
        # Per group, each member's key prefixes, built once per membership (the fan-out
        # loop then only appends a seq).
        self._prefixes: dict[str, tuple[G.GroupState, list[_MemberKeys]]] = {}

    def update(self, changed: dict[str, G.GroupState | None]) -> None:
        if len(self.states) + len(changed) > self.max_groups:
            self.states.clear()
            self._prefixes.clear()
        for gid, state in changed.items():
            self._prefixes.pop(gid, None)
            if state is None:
                self.states.pop(gid, None)
            else:
                self.states[gid] = state

    def member_keys(self, state: G.GroupState) -> list[_MemberKeys]:
        cached = self._prefixes.get(state.id)
        if cached is not None and cached[0] is state:
            return cached[1]
        if len(self._prefixes) >= self.max_groups:
            self._prefixes.clear()
        keys = [
            (
                m.username,
                K.timeline_prefix(m.username),
                K.conv_prefix(m.username, state.id),
                (m.username, state.id),
            )
            for m in state.members
        ]
        self._prefixes[state.id] = (state, keys)
        return keys


# (member, timeline key prefix, conversation key prefix, conversation meta's key)
_MemberKeys = tuple[str, bytes, bytes, tuple[str, str]]


class GroupOps:
    # Provided by Batch.
    db: Rdict
    wb: WriteBatch
    group_cache: GroupCache
    groups_changed: dict[str, G.GroupState | None]
    _sent: dict[bytes, SendResult]
    _gseqs: dict[str, int]
    _gseqs_dirty: set[str]
    _dirty: set[str]
    lines: Lines
    _metas: dict[tuple[str, str], list[int]]

    if TYPE_CHECKING:

        def get(self, key: bytes) -> bytes | None: ...
        def put(self, key: bytes, value: bytes) -> None: ...
        def next_seq(self, user: str) -> int: ...
        def line(self, user: str) -> Line: ...
        def close_run(self, user: str, line: Line) -> None: ...
        def user_exists(self, user: str) -> bool: ...
        def _original_answer(self, sender: str, seq: int, client_id: str) -> SendResult: ...
        def meta(self, owner: str, peer: str) -> list[int] | None: ...
        def _touch_conversation(
            self, owner: str, peer: str, seq: int, counterpart: int, *, incoming: bool
        ) -> None: ...

    def group_state(self, gid: str) -> G.GroupState | None:
        state: Any = self.groups_changed.get(gid, _GONE)
        if state is not _GONE:
            return state  # type: ignore[no-any-return]
        state = self.group_cache.states.get(gid)
        if state is None:
            raw = self.get(K.group_key(gid))
            if raw is None:
                return None
            state = _state_decoder.decode(raw)
            self.group_cache.states[gid] = state
        return state  # type: ignore[no-any-return]

    def _groups_of(self, user: str) -> int:
        raw = self.get(K.groups_count_key(user))
        return K.unpack_u64(raw) if raw else 0

    def _check_room(self, users: list[str], max_groups: int) -> None:
        """Before anything is written: each of `users` may join one more group."""
        for user in users:
            if self._groups_of(user) >= max_groups:
                raise G.too_many_groups(user, max_groups)

    def _save_group(self, state: G.GroupState, old: G.GroupState | None) -> None:
        self.groups_changed[state.id] = state
        self.put(K.group_key(state.id), msgspec.msgpack.encode(state))
        before = set() if old is None else set(old.usernames)
        after = set(state.usernames)
        for user in after - before:
            self.wb.put(K.member_of_key(user, state.id), b"")
            self.put(K.groups_count_key(user), K.pack_u64(self._groups_of(user) + 1))
        for user in before - after:
            self._left(user, state.id)

    def _left(self, user: str, gid: str) -> None:
        self.wb.delete(K.member_of_key(user, gid))
        self.put(K.groups_count_key(user), K.pack_u64(max(self._groups_of(user) - 1, 0)))

    def gseq(self, gid: str) -> int:
        """The group's newest log entry, this batch's included."""
        gseq = self._gseqs.get(gid)
        if gseq is None:
            raw = self.get(K.gseq_key(gid))
            gseq = self._gseqs[gid] = K.unpack_u64(raw) if raw else 0
        return gseq

    def _next_gseq(self, gid: str) -> int:
        gseq = self._gseqs[gid] = self.gseq(gid) + 1
        self._gseqs_dirty.add(gid)
        return gseq

    def _announce(
        self, state: G.GroupState, changes: list[G.Change], ts: int, name: str
    ) -> tuple[Published, ...]:
        """Membership events, whole, in the timeline of everyone concerned."""
        out: list[Published] = []
        for change in changes:
            tail = message_tail(G.event_tail(state.id, name, change, ts))
            for user in change.recipients:
                seq = self.next_seq(user)
                event = with_seq(seq, tail)
                value = K.timeline_value(K.KIND_GROUP_EVENT, 0, state.id, event)
                self.wb.put(K.timeline_key(user, seq), value)
                meta = self.meta(user, state.id)
                if meta is None:
                    meta = self._metas[(user, state.id)] = [0, 0, 0, 0, 0, 0]
                meta[0] = seq
                # (the group's messages before it, 0: an event, not a run)
                self.wb.put(K.conv_key(user, state.id, seq), K.pack_conv(meta[1], 0))
                out.append(Published(user, seq, event))
        return tuple(out)

    # ---- operations ---------------------------------------------------------------------
    def create_group(self, op: CreateGroup) -> GroupResult:
        if self.group_state(op.id) is not None:
            raise CourierError("conflict", "A group with this id exists.", 409)
        G.check_usernames(op.members)
        for user in op.members:
            if user != op.owner and not self.user_exists(user):
                raise unknown_user(user)
        state, change = G.new_group(op.id, op.name, op.owner, op.members, op.ts, op.max_members)
        self._check_room(list(state.usernames), op.max_groups)
        self._save_group(state, None)
        return GroupResult(state, self._announce(state, [change], op.ts, state.name))

    def change_group(self, op: ChangeGroup) -> GroupResult:
        state = self.group_state(op.id)
        if state is None:
            raise G.unknown_group(op.id)
        if op.kind == "rename":
            new, changes = G.rename(state, op.by, op.name)
        elif op.kind == "add":
            G.check_adder(state, op.by)
            if state.member(op.member) is None and (
                not valid_username(op.member) or not self.user_exists(op.member)
            ):
                raise unknown_user(op.member)
            new, changes = G.add_member(
                state, op.by, op.member, G.check_role(op.role), op.max_members
            )
            if state.member(op.member) is None:
                self._check_room([op.member], op.max_groups)
        else:
            new, changes = G.remove_member(state, op.by, op.member)
        if not changes:
            return GroupResult(state)
        if not new.members:
            self.groups_changed[op.id] = None
            self.wb.delete(K.group_key(op.id))
            for user in state.usernames:
                self._left(user, op.id)
        else:
            self._save_group(new, state)
        published = self._announce(new, changes, op.ts, new.name)
        return GroupResult(new if new.members else None, published)

    def append_group_message(self, op: AppendGroupMessage) -> SendResult:
        sender, gid = op.sender, op.group
        dkey = K.dedupe_key(sender, sender, op.client_id)
        earlier = self._sent.get(dkey)
        if earlier is not None:
            return SendResult(earlier.id, earlier.seq, earlier.ts, earlier.client_id, True)
        raw_seq = self.get(dkey)
        if raw_seq is not None:
            return self._original_answer(sender, K.unpack_u64(raw_seq), op.client_id)
        state = self.group_state(gid)
        if state is None or state.member(sender) is None:
            raise G.unknown_group(gid)
        members = state.usernames
        on = self.lines.load_group(self.db, gid, members)
        gseq = self._next_gseq(gid)
        tail = message_tail(
            G.GroupMessageEvent(
                seq=0,
                id=op.id,
                from_=sender,
                group=gid,
                body=op.body,
                ts=op.ts,
                client_id=op.client_id,
            )
        )
        if len(on) != len(members) or any(user not in on for user in members):
            self._open_runs(state, on, gseq)
        # Every member is on this group's run now: member seq = gseq + offset, no write.
        seqs = [gseq + on[user] for user in members]
        sseq = gseq + on[sender]
        meta = self.meta(sender, gid)
        assert meta is not None  # made when the sender's run opened
        meta[4] += 1  # messages the sender sent to the group
        self.wb.put(K.own_key(sender, gid, sseq), K.pack_u64(meta[4]))
        flags = K.LOG_RECEIPTS if len(members) <= G.RECEIPTS_MAX_MEMBERS else 0
        self.wb.put(K.group_log_key(gid, gseq), K.log_value(flags, sseq, sender, tail))
        self.put(dkey, K.pack_u64(sseq))
        fanout = GroupFanout(gid, tail, members, tuple(seqs))
        result = SendResult(op.id, sseq, op.ts, op.client_id, False, (), fanout)
        self._sent[dkey] = result
        return result

    def _open_runs(self, state: G.GroupState, on: dict[str, int], gseq: int) -> None:
        """Members not on this group's run end theirs and open one here: a run entry in the
        timeline and in the conversation index, and the conversation's recency."""
        put, pack, pack_conv = self.wb.put, K.pack_u64, K.pack_conv
        run = K.timeline_value(K.KIND_GROUP_RUN, gseq, state.id, b"")
        for user, tprefix, cprefix, mkey in self.group_cache.member_keys(state):
            if user in on:
                continue
            line = self.line(user)
            if line.gid:
                self.close_run(user, line)
            start = line.before + 1
            line.gid, line.gstart = state.id, gseq
            self._dirty.add(user)
            on[user] = start - gseq
            meta = self.meta(*mkey)
            if meta is None:
                meta = self._metas[mkey] = [0, 0, 0, 0, 0, 0]
            packed = pack(start)
            put(tprefix + packed, run)
            put(cprefix + packed, pack_conv(meta[1], gseq))  # messages before the run
            meta[0] = start

    def finish_groups(self) -> None:
        for gid in self._gseqs_dirty:
            self.wb.put(K.gseq_key(gid), K.pack_u64(self._gseqs[gid]))

"""One group commit on one PostgreSQL server: a list of operations in one transaction.

A batch costs a fixed number of statements whatever its size: every row it needs is read
with one query per kind (keys passed as one JSON document or a few arrays), the decisions are
made in memory exactly like the RocksDB batch (overlays for dedupe keys, metas, markers), seqs
are taken with one `INSERT ... ON CONFLICT DO UPDATE ... RETURNING` on `heads` for all users
of the batch (the "UPDATE ... RETURNING per user per batch", which also creates a missing
head), and timeline rows, dedupe keys and conversation metas are written by one statement.
A batch of messages is BEGIN, three reads, the seq statement, the write, COMMIT. Seq numbers
only become known after the seq statement, so rows and results are built from `Slot`s filled
in afterwards.

Rows the batch reads and then rewrites (conversation metas, heads, receipt markers) are
locked `FOR UPDATE` in key order, so several nodes writing to the same server serialise on
them instead of losing updates; dedupe keys are UNIQUE, so a send raced by two nodes fails
one batch, which the writer retries operation by operation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgspec

from courier.adapters.pg_schema import (
    BODY_JOIN,
    EVENT_SQL,
    KIND_GROUP_OWN,
    KIND_IN,
    KIND_OUT,
    KIND_RECEIPT,
    Conn,
)
from courier.adapters.pg_sessions import SessionRow, SessionWrites, TokenRow
from courier.domain.errors import CourierError, bad_request, unknown_user
from courier.domain.events import (
    MessageEvent,
    ReceiptEvent,
    encode_event,
    message_tail,
    peek,
    with_seq,
)
from courier.domain.groups import GroupReceiptEvent
from courier.domain.ops import (
    AckAdvance,
    AdvanceAck,
    AppendMessage,
    AppendReceipt,
    CreateUser,
    MarkRead,
    Published,
    SendResult,
)
from courier.domain.shards import shard_of


# ---- operations of one server ---------------------------------------------------------------
class Pair(msgspec.Struct, frozen=True):
    """A send whose two timelines live on this server: both sides in one transaction."""

    op: AppendMessage


class RecipientSide(msgspec.Struct, frozen=True):
    """The first half of a send across servers: the recipient's copy."""

    op: AppendMessage


class Incoming(msgspec.Struct, frozen=True):
    """The recipient's copy as stored; the sender's copy is made from it, so a retry with an
    edited body still yields two identical copies. `fresh`: written by this operation."""

    seq: int
    event: bytes
    id: str
    ts: int
    body: str
    fresh: bool


class SenderSide(msgspec.Struct, frozen=True):
    """The second half of a send across servers, after the recipient's copy is durable."""

    op: AppendMessage
    incoming: Incoming


class SweepUsers(msgspec.Struct, frozen=True):
    users: tuple[str, ...]
    cutoff_ts: int


class Resolve(msgspec.Struct, frozen=True):
    """A counterpart seq that lives on another server: the seq of `peer`'s outgoing copy
    with `client_id`, to be looked up there after the commit."""

    peer: str
    client_id: str


ServerOp = (
    (CreateUser | TokenRow | SessionRow | AdvanceAck)
    | (Pair | RecipientSide | SenderSide)
    | (MarkRead | AppendReceipt)
)


# ---- seqs known only after allocation -------------------------------------------------------
class Slot:
    """The k-th seq taken for `user` in this batch; `seq` is set after allocation."""

    __slots__ = ("k", "seq", "user")

    def __init__(self, user: str, k: int) -> None:
        self.user = user
        self.k = k
        self.seq = 0


SeqRef = int | Slot


def _v(ref: SeqRef | None) -> int | None:
    return ref.seq if isinstance(ref, Slot) else ref


@dataclass
class _Row:
    owner: str
    seq: Slot
    kind: int
    peer: str
    counterpart: SeqRef | None
    client_id: str | None
    ts: int
    ordinal: int | None
    in_cp: SeqRef | None
    in_cid: str | None
    make: Callable[[int], bytes]
    event: bytes = b""


@dataclass
class _Meta:
    last_seq: SeqRef = 0
    in_total: int = 0
    read_seq: int = 0
    read_ordinal: int = 0
    in_cp: SeqRef | None = 0
    in_cid: str | None = None
    stored: bool = False  # read from the database (updated), else new (inserted)


@dataclass
class _Dup:
    """A dedupe key already taken: in the database (seq, stored event) or earlier in this
    batch (the answer of that operation, built after allocation)."""

    seq: int = 0
    event: bytes | None = None
    earlier: Callable[[], Any] | None = None


@dataclass
class _Keys:
    dedupe: set[tuple[str, str, str]] = field(default_factory=set)
    users: set[str] = field(default_factory=set)
    metas: set[tuple[str, str]] = field(default_factory=set)
    heads: set[str] = field(default_factory=set)
    acks: set[tuple[str, str]] = field(default_factory=set)
    receipts: set[tuple[str, str, str]] = field(default_factory=set)
    blocks: set[tuple[str, str]] = field(default_factory=set)  # (owner, blocked)


def _message(op: AppendMessage, id_: str, ts: int, body: str) -> Callable[[int], bytes]:
    """The encoder of a message's copies: encoded once, each copy's seq spliced in."""
    tail = message_tail(
        MessageEvent(
            seq=0,
            id=id_,
            from_=op.sender,
            to=op.recipient,
            body=body,
            ts=ts,
            client_id=op.client_id,
        )
    )
    return partial(with_seq, tail=tail)


class PgBatch:
    def __init__(self, conn: Conn, known_users: set[str]) -> None:
        self.conn = conn
        self.known_users = known_users
        self.new_users: list[str] = []
        self._dedupe: dict[tuple[str, str, str], _Dup] = {}
        self._dedupe_new: list[tuple[str, str, str, Slot]] = []
        self._users: set[str] = set()
        self._created: list[CreateUser] = []
        self._metas: dict[tuple[str, str], _Meta] = {}
        self._heads: dict[str, tuple[int, int]] = {}
        self._acked: dict[str, int] = {}
        self._acks: dict[tuple[str, str], int] = {}
        self._acks_dirty: set[tuple[str, str]] = set()
        self._markers: dict[tuple[str, str, str], int] = {}
        self._markers_dirty: set[tuple[str, str, str]] = set()
        self._sessions = SessionWrites()
        self._lookups: dict[int, tuple[int, SeqRef | None, str | None]] = {}
        self._need: dict[str, int] = {}
        self._slots: list[Slot] = []
        self._rows: list[_Row] = []
        self._inserted_users: set[str] = set()
        self._blocked: set[tuple[str, str]] = set()  # (owner, blocked) among the batch's

    # ---- the whole batch ----------------------------------------------------------------
    async def run(self, ops: list[ServerOp]) -> list[Any]:
        await self._read(ops)
        plans: list[Any] = []
        for i, op in enumerate(ops):
            try:
                plans.append(self._plan(i, op))
            except CourierError as exc:
                plans.append(exc)
        await self._allocate()
        for row in self._rows:
            row.event = row.make(row.seq.seq)
        await self._write()
        return [p() if callable(p) else p for p in plans]

    # ---- reads --------------------------------------------------------------------------
    async def _read(self, ops: list[ServerOp]) -> None:
        keys = _Keys()
        for op in ops:
            if isinstance(op, Pair):
                m = op.op
                keys.dedupe.add((m.sender, m.sender, m.client_id))
                keys.users.add(m.recipient)
                keys.metas.update(((m.recipient, m.sender), (m.sender, m.recipient)))
                keys.blocks.add((m.recipient, m.sender))
            elif isinstance(op, RecipientSide):
                m = op.op
                keys.dedupe.add((m.recipient, m.sender, m.client_id))
                keys.users.add(m.recipient)
                keys.metas.add((m.recipient, m.sender))
                keys.blocks.add((m.recipient, m.sender))
            elif isinstance(op, SenderSide):
                m = op.op
                keys.dedupe.add((m.sender, m.sender, m.client_id))
                keys.metas.add((m.sender, m.recipient))
            elif isinstance(op, CreateUser):
                keys.users.add(op.username)
            elif isinstance(op, AdvanceAck):
                keys.heads.add(op.user)
                keys.acks.add((op.user, op.device))
            elif isinstance(op, MarkRead):
                keys.heads.add(op.user)
                keys.metas.add((op.user, op.peer))
            elif isinstance(op, AppendReceipt):
                peer = f"{op.group}/{op.peer}" if op.group else op.peer
                keys.receipts.add((op.owner, peer, op.status))
                keys.receipts.add((op.owner, peer, "delivered"))
                if not op.group:
                    keys.blocks.add((op.owner, op.peer))
        keys.users -= self.known_users
        if keys.heads:
            # This batch reads heads: it locks every head it may advance in the same sorted
            # pass, so two nodes never take head locks in opposite orders.
            keys.heads.update(_advancing(ops))
        conn = self.conn
        if keys.dedupe:
            for r in await conn.fetch(
                f"SELECT d.owner, d.sender, d.client_id, d.seq, {EVENT_SQL}"
                " FROM jsonb_array_elements($1::text::jsonb) AS k"
                " JOIN dedupe d ON d.shard = (k->>0)::int2 AND d.owner = k->>1"
                " AND d.sender = k->>2 AND d.client_id = k->>3"
                " LEFT JOIN timeline t ON t.shard = d.shard AND t.owner = d.owner"
                f" AND t.seq = d.seq{BODY_JOIN}",
                _json([(shard_of(k[0]), *k) for k in sorted(keys.dedupe)]),
            ):
                self._dedupe[(r[0], r[1], r[2])] = _Dup(seq=r[3], event=r[4])
        if keys.users:
            for r in await conn.fetch(
                "SELECT username FROM users WHERE username = ANY($1::text[])", list(keys.users)
            ):
                self._users.add(r[0])
        if keys.metas:
            for r in await conn.fetch(
                "SELECT c.owner, c.peer, c.last_seq, c.in_total, c.read_seq, c.read_ordinal,"
                " c.in_cp, c.in_cid FROM jsonb_array_elements($1::text::jsonb) AS k"
                " JOIN conversations c ON c.shard = (k->>0)::int2 AND c.owner = k->>1"
                " AND c.peer = k->>2 ORDER BY c.shard, c.owner, c.peer FOR UPDATE OF c",
                _json([(shard_of(k[0]), *k) for k in sorted(keys.metas)]),
            ):
                self._metas[(r[0], r[1])] = _Meta(r[2], r[3], r[4], r[5], r[6], r[7], True)
        if keys.heads:
            owners = sorted(keys.heads)
            for r in await conn.fetch(
                "SELECT h.owner, h.seq, h.acked FROM unnest($1::int2[], $2::text[]) AS k(s, o)"
                " JOIN heads h ON h.shard = k.s AND h.owner = k.o"
                " ORDER BY h.shard, h.owner FOR UPDATE OF h",
                _shards(owners),
                owners,
            ):
                self._heads[r[0]] = (r[1], r[2])
        if keys.acks:
            o, d = _columns(sorted(keys.acks), 2)
            for r in await conn.fetch(
                "SELECT a.owner, a.device, a.seq"
                " FROM unnest($1::int2[], $2::text[], $3::text[]) AS k(h, o, d)"
                " JOIN acks a ON a.shard = k.h AND a.owner = k.o AND a.device = k.d",
                _shards(o),
                o,
                d,
            ):
                self._acks[(r[0], r[1])] = r[2]
        if keys.receipts:
            o, p, s = _columns(sorted(keys.receipts), 3)
            for r in await conn.fetch(
                "SELECT m.owner, m.peer, m.status, m.up_to"
                " FROM unnest($1::int2[], $2::text[], $3::text[], $4::text[]) AS k(h, o, p, s)"
                " JOIN receipts m ON m.shard = k.h AND m.owner = k.o AND m.peer = k.p"
                " AND m.status = k.s ORDER BY m.shard, m.owner, m.peer, m.status FOR UPDATE OF m",
                _shards(o),
                o,
                p,
                s,
            ):
                self._markers[(r[0], r[1], r[2])] = r[3]
        if keys.blocks:
            o, b = _columns(sorted(keys.blocks), 2)
            for r in await conn.fetch(
                "SELECT k.o, k.b FROM unnest($1::int2[], $2::text[], $3::text[]) AS k(h, o, b)"
                " WHERE EXISTS (SELECT 1 FROM blocks x WHERE x.shard = k.h AND x.owner = k.o"
                " AND x.blocked = k.b)",
                _shards(o),
                o,
                b,
            ):
                self._blocked.add((r[0], r[1]))
        reads = [(i, op) for i, op in enumerate(ops) if isinstance(op, MarkRead)]
        if reads:
            # The newest conversation row at or before the (clamped) marker; rows written by
            # this batch are all above the committed head, so the committed state suffices.
            users = [op.user for _, op in reads]
            for r in await self.conn.fetch(
                "SELECT k.i, t.ordinal, t.in_cp, t.in_cid FROM unnest($1::int[], $2::int2[],"
                " $3::text[], $4::text[], $5::bigint[]) AS k(i, h, o, p, s)"
                " CROSS JOIN LATERAL (SELECT ordinal, in_cp, in_cid FROM timeline"
                "  WHERE shard = k.h AND owner = k.o AND peer = k.p AND kind <> 3"
                "  AND seq <= k.s ORDER BY seq DESC LIMIT 1) AS t",
                [i for i, _ in reads],
                _shards(users),
                users,
                [op.peer for _, op in reads],
                [min(op.seq, self._committed_head(op.user)) for _, op in reads],
            ):
                self._lookups[r[0]] = (r[1] or 0, r[2], r[3])

    # ---- decisions ----------------------------------------------------------------------
    def _plan(self, i: int, op: ServerOp) -> Any:
        if isinstance(op, Pair):
            return self._pair(op.op)
        if isinstance(op, RecipientSide):
            return self._recipient_side(op.op)
        if isinstance(op, SenderSide):
            return self._sender_side(op.op, op.incoming)
        if isinstance(op, CreateUser):
            return self._create_user(op)
        if isinstance(op, TokenRow | SessionRow):
            self._sessions.plan(op)
            return None
        if isinstance(op, AdvanceAck):
            return self._advance_ack(op)
        if isinstance(op, MarkRead):
            return self._mark_read(i, op)
        return self._append_receipt(op)

    def _slot(self, user: str) -> Slot:
        k = self._need.get(user, 0) + 1
        self._need[user] = k
        slot = Slot(user, k)
        self._slots.append(slot)
        return slot

    def _user_exists(self, user: str) -> bool:
        return user in self.known_users or user in self._users

    def _meta(self, owner: str, peer: str) -> _Meta:
        meta = self._metas.get((owner, peer))
        if meta is None:
            meta = self._metas[(owner, peer)] = _Meta()
        return meta

    def _committed_head(self, user: str) -> int:
        return self._heads.get(user, (0, 0))[0]

    def _create_user(self, op: CreateUser) -> Any:
        if self._user_exists(op.username):
            return False
        self._users.add(op.username)
        self._created.append(op)
        return lambda: op.username in self._inserted_users

    def _sent_before(self, key: tuple[str, str, str], client_id: str) -> Any:
        """The answer to a send whose sender-side key is taken, or None."""
        dup = self._dedupe.get(key)
        if dup is None:
            return None
        earlier = dup.earlier
        if earlier is not None:

            def again() -> SendResult:
                first: SendResult = earlier()
                return SendResult(first.id, first.seq, first.ts, first.client_id, True)

            return again
        if dup.event is None:
            raise CourierError("store_inconsistent", "The original message is gone.", 500)
        ev = peek(dup.event)
        return SendResult(ev.id, dup.seq, ev.ts, client_id, True)

    def _incoming_row(
        self,
        op: AppendMessage,
        rseq: Slot,
        counterpart: SeqRef | None,
        make: Callable[[int], bytes],
    ) -> _Row:
        meta = self._meta(op.recipient, op.sender)
        meta.in_total += 1
        meta.last_seq = rseq
        meta.in_cp = counterpart
        meta.in_cid = None if counterpart is not None else op.client_id
        row = _Row(
            op.recipient,
            rseq,
            KIND_IN,
            op.sender,
            counterpart,
            op.client_id,
            op.ts,
            meta.in_total,
            meta.in_cp,
            meta.in_cid,
            make,
        )
        self._rows.append(row)
        return row

    def _outgoing_row(
        self,
        op: AppendMessage,
        sseq: Slot,
        counterpart: SeqRef,
        ts: int,
        make: Callable[[int], bytes],
    ) -> _Row:
        meta = self._meta(op.sender, op.recipient)
        meta.last_seq = sseq
        row = _Row(
            op.sender,
            sseq,
            KIND_OUT,
            op.recipient,
            counterpart,
            op.client_id,
            ts,
            meta.in_total,
            meta.in_cp,
            meta.in_cid,
            make,
        )
        self._rows.append(row)
        return row

    def _take_key(self, key: tuple[str, str, str], seq: Slot, answer: Callable[[], Any]) -> None:
        self._dedupe[key] = _Dup(earlier=answer)
        self._dedupe_new.append((*key, seq))

    def _pair(self, op: AppendMessage) -> Any:
        key = (op.sender, op.sender, op.client_id)
        earlier = self._sent_before(key, op.client_id)
        if earlier is not None:
            return earlier
        if op.sender == op.recipient:
            raise bad_request("A message needs a recipient other than its sender.")
        if not self._user_exists(op.recipient):
            raise unknown_user(op.recipient)
        if (op.recipient, op.sender) in self._blocked:
            return self._outgoing_only(op, key)
        rseq, sseq = self._slot(op.recipient), self._slot(op.sender)

        make = _message(op, op.id, op.ts, op.body)
        incoming = self._incoming_row(op, rseq, sseq, make)
        outgoing = self._outgoing_row(op, sseq, rseq, op.ts, make)

        def answer() -> SendResult:
            return SendResult(
                op.id,
                sseq.seq,
                op.ts,
                op.client_id,
                False,
                (
                    Published(op.recipient, rseq.seq, incoming.event),
                    Published(op.sender, sseq.seq, outgoing.event),
                ),
            )

        self._take_key(key, sseq, answer)
        return answer

    def _outgoing_only(self, op: AppendMessage, key: tuple[str, str, str]) -> Any:
        """A send to someone who blocked the sender: the outgoing copy alone."""
        sseq = self._slot(op.sender)
        row = self._outgoing_row(op, sseq, 0, op.ts, _message(op, op.id, op.ts, op.body))

        def answer() -> SendResult:
            outgoing = Published(op.sender, sseq.seq, row.event)
            return SendResult(op.id, sseq.seq, op.ts, op.client_id, False, (outgoing,))

        self._take_key(key, sseq, answer)
        return answer

    def _recipient_side(self, op: AppendMessage) -> Any:
        key = (op.recipient, op.sender, op.client_id)
        dup = self._dedupe.get(key)
        if dup is not None:
            earlier = dup.earlier
            if earlier is not None:

                def again() -> Incoming:
                    first: Incoming = earlier()
                    return msgspec.structs.replace(first, fresh=False)

                return again
            if dup.event is None:
                raise CourierError("store_inconsistent", "The original message is gone.", 500)
            ev = msgspec.json.decode(dup.event, type=MessageEvent)
            return Incoming(dup.seq, dup.event, ev.id, ev.ts, ev.body, False)
        if not self._user_exists(op.recipient):
            raise unknown_user(op.recipient)
        if (op.recipient, op.sender) in self._blocked:
            # No copy and no key here: the sender's half stores the outgoing copy alone. (A
            # retry of it after an unblock would deliver it: the retry is a new attempt.)
            return Incoming(0, b"", op.id, op.ts, op.body, True)
        rseq = self._slot(op.recipient)
        row = self._incoming_row(op, rseq, None, _message(op, op.id, op.ts, op.body))

        def answer() -> Incoming:
            return Incoming(rseq.seq, row.event, op.id, op.ts, op.body, True)

        self._take_key(key, rseq, answer)
        return answer

    def _sender_side(self, op: AppendMessage, inc: Incoming) -> Any:
        key = (op.sender, op.sender, op.client_id)
        earlier = self._sent_before(key, op.client_id)
        if earlier is not None:
            return earlier
        sseq = self._slot(op.sender)
        row = self._outgoing_row(op, sseq, inc.seq, inc.ts, _message(op, inc.id, inc.ts, inc.body))

        def answer() -> SendResult:
            outgoing = Published(op.sender, sseq.seq, row.event)
            if not inc.seq:  # the recipient blocked the sender: no incoming copy
                return SendResult(inc.id, sseq.seq, inc.ts, op.client_id, False, (outgoing,))
            return SendResult(
                inc.id,
                sseq.seq,
                inc.ts,
                op.client_id,
                False,
                (Published(op.recipient, inc.seq, inc.event), outgoing),
            )

        self._take_key(key, sseq, answer)
        return answer

    def _advance_ack(self, op: AdvanceAck) -> AckAdvance:
        seq = min(op.seq, self._committed_head(op.user))
        dkey = (op.user, op.device)
        if self._acks.get(dkey, -1) < seq:
            self._acks[dkey] = seq
            self._acks_dirty.add(dkey)
        before = self._acked.get(op.user, self._heads.get(op.user, (0, 0))[1])
        if seq > before:
            self._acked[op.user] = seq
            return AckAdvance(before, seq)
        return AckAdvance(before, before)

    def _mark_read(self, i: int, op: MarkRead) -> int | Resolve:
        seq = min(op.seq, self._committed_head(op.user))
        meta = self._metas.get((op.user, op.peer))
        found = self._lookups.get(i)
        if meta is None or found is None:
            return 0
        ordinal, in_cp, in_cid = found
        if seq > meta.read_seq:
            meta.read_seq, meta.read_ordinal = seq, ordinal
        # Answered even when the marker did not move, so a receipt lost to a crash after this
        # commit is produced by the client's next read (receipts are max-registers).
        if in_cp is None:
            return Resolve(op.peer, in_cid) if in_cid else 0
        return _v(in_cp) or 0

    def _append_receipt(self, op: AppendReceipt) -> Any:
        if not op.group and (op.owner, op.peer) in self._blocked:
            return None  # the owner blocked the reader: no receipt from them
        # A group's markers are per (owner, group/member, status): "/" is in no name or id.
        marker_peer = f"{op.group}/{op.peer}" if op.group else op.peer
        key = (op.owner, marker_peer, op.status)
        if self._markers.get(key, -1) >= op.up_to:
            return None
        self._markers[key] = op.up_to
        self._markers_dirty.add(key)
        if op.status == "read":  # read implies delivered: no later, smaller delivered receipt
            dkey = (op.owner, marker_peer, "delivered")
            if self._markers.get(dkey, -1) < op.up_to:
                self._markers[dkey] = op.up_to
                self._markers_dirty.add(dkey)
        seq = self._slot(op.owner)

        def make(s: int) -> bytes:
            if op.group:
                return msgspec.json.encode(
                    GroupReceiptEvent(
                        seq=s,
                        status=op.status,
                        group=op.group,
                        peer=op.peer,
                        up_to=op.up_to,
                        ts=op.ts,
                    )
                )
            return encode_event(
                ReceiptEvent(seq=s, status=op.status, peer=op.peer, up_to=op.up_to, ts=op.ts)
            )

        row = _Row(op.owner, seq, KIND_RECEIPT, op.peer, None, None, op.ts, None, None, None, make)
        self._rows.append(row)
        return lambda: Published(op.owner, seq.seq, row.event)

    # ---- writes -------------------------------------------------------------------------
    async def _allocate(self) -> None:
        """One statement takes every seq of the batch: per user, head += n, RETURNING."""
        grow = dict.fromkeys((c.username for c in self._created), 0)
        grow.update(self._need)
        if not grow:
            return
        owners = sorted(grow, key=lambda o: (shard_of(o), o))  # the lock order of reads
        heads = {
            r[0]: r[1]
            for r in await self.conn.fetch(
                "INSERT INTO heads AS h (shard, owner, seq)"
                " SELECT (v->>0)::int2, v->>1, (v->>2)::bigint"
                " FROM jsonb_array_elements($1::text::jsonb) AS v"
                " ON CONFLICT (shard, owner) DO UPDATE SET seq = h.seq + EXCLUDED.seq"
                " RETURNING h.owner, h.seq",
                _json([(shard_of(o), o, grow[o]) for o in owners]),
            )
        }
        for slot in self._slots:
            slot.seq = heads[slot.user] - self._need[slot.user] + slot.k

    async def _write(self) -> None:
        conn = self.conn
        if self._created:
            rows = await conn.fetch(
                "INSERT INTO users (username, shard, password_hash, created)"
                " SELECT * FROM unnest($1::text[], $2::int2[], $3::text[], $4::bigint[])"
                " ON CONFLICT (username) DO NOTHING RETURNING username",
                [c.username for c in self._created],
                _shards([c.username for c in self._created]),
                [c.password_hash for c in self._created],
                [c.ts for c in self._created],
            )
            self._inserted_users = {r[0] for r in rows}
            self.new_users.extend(self._inserted_users)
            if rows:  # a new user is found by their name at once (pg_profiles)
                names = [r[0] for r in rows]
                await conn.execute(
                    "INSERT INTO user_terms (term, username, shard)"
                    " SELECT u, u, s FROM unnest($1::text[], $2::int2[]) AS k(u, s)"
                    " ON CONFLICT DO NOTHING",
                    names,
                    _shards(names),
                )
        if self._rows or self._dedupe_new or self._metas:
            await self._write_rows()
        await self._write_small()

    async def _write_rows(self) -> None:
        """Timeline rows, dedupe keys and conversation metas in one statement: one round trip
        per batch. Their values travel as one jsonb document (encoded by msgspec, parsed once
        by the server) rather than dozens of typed arrays encoded value by value; the events
        travel beside it as bytea, so they are stored byte for byte as they were encoded."""
        old = sorted(k for k, m in self._metas.items() if m.stored)
        new = sorted(k for k, m in self._metas.items() if not m.stored)
        payload = msgspec.json.encode(
            [
                [
                    [
                        shard_of(r.owner),
                        r.owner,
                        r.seq.seq,
                        r.kind,
                        r.peer,
                        _v(r.counterpart),
                        r.client_id,
                        r.ts,
                        r.ordinal,
                        _v(r.in_cp),
                        r.in_cid,
                    ]
                    for r in self._rows
                ],
                [[shard_of(o), o, s, c, slot.seq] for o, s, c, slot in self._dedupe_new],
                [self._meta_row(k) for k in old],
                [self._meta_row(k) for k in new],
            ]
        )
        await self.conn.execute(
            "WITH b AS (SELECT $1::text::jsonb AS j),"
            " t AS (INSERT INTO timeline (shard, owner, seq, kind, peer, counterpart, client_id,"
            "  ts, ordinal, in_cp, in_cid, event)"
            "  SELECT (e->>0)::int2, e->>1, (e->>2)::bigint, (e->>3)::int2, e->>4,"
            "  (e->>5)::bigint, e->>6, (e->>7)::bigint, (e->>8)::bigint, (e->>9)::bigint,"
            "  e->>10, event"
            "  FROM b, ROWS FROM (jsonb_array_elements(b.j->0), unnest($2::bytea[]))"
            "  AS r(e, event)),"
            " d AS (INSERT INTO dedupe (shard, owner, sender, client_id, seq)"
            "  SELECT (e->>0)::int2, e->>1, e->>2, e->>3, (e->>4)::bigint"
            "  FROM b, jsonb_array_elements(b.j->1) e),"
            " u AS (UPDATE conversations c SET last_seq = (e->>3)::bigint,"
            "  in_total = (e->>4)::bigint, read_seq = (e->>5)::bigint,"
            "  read_ordinal = (e->>6)::bigint, in_cp = (e->>7)::bigint, in_cid = e->>8"
            "  FROM b, jsonb_array_elements(b.j->2) e"
            "  WHERE c.shard = (e->>0)::int2 AND c.owner = e->>1 AND c.peer = e->>2)"
            " INSERT INTO conversations (shard, owner, peer, last_seq, in_total, read_seq,"
            "  read_ordinal, in_cp, in_cid)"
            " SELECT (e->>0)::int2, e->>1, e->>2, (e->>3)::bigint, (e->>4)::bigint,"
            " (e->>5)::bigint, (e->>6)::bigint, (e->>7)::bigint, e->>8"
            " FROM b, jsonb_array_elements(b.j->3) e",
            payload.decode(),
            [r.event for r in self._rows],
        )

    def _meta_row(self, key: tuple[str, str]) -> list[Any]:
        m = self._metas[key]
        return [
            shard_of(key[0]),
            key[0],
            key[1],
            _v(m.last_seq),
            m.in_total,
            m.read_seq,
            m.read_ordinal,
            _v(m.in_cp),
            m.in_cid,
        ]

    async def _write_small(self) -> None:
        """Tokens, sessions, acks and receipt markers: rare next to messages, one statement
        each."""
        conn = self.conn
        if self._sessions:
            await self._sessions.write(conn)
        if self._acks_dirty:
            keys = sorted(self._acks_dirty)
            await conn.execute(
                "INSERT INTO acks AS a (shard, owner, device, seq)"
                " SELECT * FROM unnest($1::int2[], $2::text[], $3::text[], $4::bigint[])"
                " ON CONFLICT (shard, owner, device)"
                " DO UPDATE SET seq = GREATEST(a.seq, EXCLUDED.seq)",
                _shards([k[0] for k in keys]),
                [k[0] for k in keys],
                [k[1] for k in keys],
                [self._acks[k] for k in keys],
            )
        if self._acked:
            owners = sorted(self._acked)
            await conn.execute(
                "UPDATE heads AS h SET acked = GREATEST(h.acked, v.a)"
                " FROM unnest($1::int2[], $2::text[], $3::bigint[]) AS v(s, o, a)"
                " WHERE h.shard = v.s AND h.owner = v.o",
                _shards(owners),
                owners,
                [self._acked[o] for o in owners],
            )
        if self._markers_dirty:
            keys3 = sorted(self._markers_dirty)
            await conn.execute(
                "INSERT INTO receipts AS m (shard, owner, peer, status, up_to)"
                " SELECT * FROM unnest($1::int2[], $2::text[], $3::text[], $4::text[],"
                " $5::bigint[]) ON CONFLICT (shard, owner, peer, status)"
                " DO UPDATE SET up_to = GREATEST(m.up_to, EXCLUDED.up_to)",
                _shards([k[0] for k in keys3]),
                [k[0] for k in keys3],
                [k[1] for k in keys3],
                [k[2] for k in keys3],
                [self._markers[k] for k in keys3],
            )


async def sweep_users(conn: Conn, op: SweepUsers) -> int:
    """Retention for some users of this server: from each one's oldest event up to the first
    one at or after the cutoff, with the dedupe keys of the dropped copies and the
    conversations whose newest message went."""
    gone = await conn.fetch(
        "WITH k AS (SELECT * FROM unnest($1::int2[], $2::text[]) AS k(h, u)),"
        " stop AS (SELECT k.h, k.u, (SELECT min(t.seq) FROM timeline t"
        "   WHERE t.shard = k.h AND t.owner = k.u AND t.ts >= $3) AS s FROM k)"
        " DELETE FROM timeline t USING stop"
        " WHERE t.shard = stop.h AND t.owner = stop.u AND t.ts < $3"
        " AND (stop.s IS NULL OR t.seq < stop.s)"
        " RETURNING t.owner, t.seq, t.kind, t.peer, t.client_id",
        _shards(op.users),
        list(op.users),
        op.cutoff_ts,
    )
    messages = [r for r in gone if r[2] != KIND_RECEIPT]
    if messages:
        owners = [r[0] for r in messages]
        shards = _shards(owners)
        peers = [r[3] for r in messages]
        seqs = [r[1] for r in messages]
        await conn.execute(
            "DELETE FROM dedupe d USING unnest($1::int2[], $2::text[], $3::text[], $4::text[],"
            " $5::bigint[]) AS k(h, o, s, c, q) WHERE d.shard = k.h AND d.owner = k.o"
            " AND d.sender = k.s AND d.client_id = k.c AND d.seq = k.q",
            shards,
            owners,
            [r[0] if r[2] in (KIND_OUT, KIND_GROUP_OWN) else r[3] for r in messages],
            [r[4] for r in messages],
            seqs,
        )
        # A group's conversation row stays: it holds the member's watermark in the group
        # (pg_groups); with its newest entry gone it leaves the list all the same.
        await conn.execute(
            "DELETE FROM conversations c USING unnest($1::int2[], $2::text[], $3::text[],"
            " $4::bigint[]) AS k(h, o, p, q)"
            " WHERE c.shard = k.h AND c.owner = k.o AND c.peer = k.p AND c.last_seq = k.q"
            " AND c.gseq = 0",
            shards,
            owners,
            peers,
            seqs,
        )
    # Group bodies as old as the cutoff: every row naming one is as old (a body's ts is its
    # rows'), so it is expired too, and readers skip a row whose body is gone.
    await conn.execute(
        "DELETE FROM group_bodies WHERE ctid = ANY(ARRAY("
        "SELECT ctid FROM group_bodies WHERE ts < $1 LIMIT 5000))",
        op.cutoff_ts,
    )
    return len(gone)


def _advancing(ops: list[ServerOp]) -> set[str]:
    """The users whose heads a batch of `ops` may advance."""
    out: set[str] = set()
    for op in ops:
        if isinstance(op, Pair):
            out.update((op.op.sender, op.op.recipient))
        elif isinstance(op, RecipientSide):
            out.add(op.op.recipient)
        elif isinstance(op, SenderSide):
            out.add(op.op.sender)
        elif isinstance(op, AppendReceipt):
            out.add(op.owner)
    return out


def _json(rows: list[tuple[Any, ...]]) -> str:
    """Many keys as one parameter: msgspec encodes them in one call and the server parses
    them once, where typed arrays cost a Python-level check per element."""
    return msgspec.json.encode(rows).decode()


def _shards(keys: Iterable[str | bytes]) -> list[int]:
    return [shard_of(k) for k in keys]


def _columns(rows: list[tuple[str, ...]], width: int) -> list[list[str]]:
    return [[r[i] for r in rows] for i in range(width)]

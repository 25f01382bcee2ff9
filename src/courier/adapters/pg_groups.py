"""Groups on the cluster store: a durable fan-out record, completed by any node.

A group lives on the server of shard_of(group id); its members on many servers. Every change
to what members see (a message, a membership event) is one transaction on the group's server:
the group's row is locked (so a message and a membership change are ordered), the group's
seq (`gseq`) advances, and a fan-out record is written holding the event (its encoding after
the seq, stored once) and its recipients, the members as of that moment. Then, per server
holding recipients, one transaction appends the event to their timelines: the body once per
server (`group_bodies`), a row per member naming it. It first claims each recipient by raising
their watermark in the group (the conversation row's gseq), so a repeat (a retry, a restarted
node, two nodes completing the same record) adds nothing, and it first applies the group's
earlier records still pending there, so every member sees the group in gseq order. When
every server is done the record is deleted. A record left by a crash is completed by any node
(`PgGroups.complete_pending`, at start and every few seconds): the message reaches every
recipient or, until completed, none has it yet but the record is durable.

`sent` is answered once the record is durable and the sender's own copy is written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import msgspec

from courier.adapters.pg_movefence import frozen_shards
from courier.adapters.pg_schema import (
    BODY_JOIN,
    EVENT_SQL,
    KIND_GROUP_EVENT,
    KIND_GROUP_IN,
    KIND_GROUP_OWN,
    Conn,
)
from courier.domain import groups as G
from courier.domain.errors import CourierError, store_unavailable, unknown_user
from courier.domain.events import message_tail, peek, with_seq
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
from courier.domain.shards import shard_of
from courier.ports import FanoutSink

if TYPE_CHECKING:
    from courier.adapters.pg_store import PgStore

log = logging.getLogger(__name__)

PENDING_AGE_MS = 2000  # a record older than this is completed by whichever node sees it
_state = msgspec.msgpack.Decoder(G.GroupState)


class Record(msgspec.Struct, frozen=True):
    """A fan-out record as stored."""

    gid: str
    gseq: int
    kind: int  # KIND_GROUP_IN for a message, KIND_GROUP_EVENT for a membership event
    author: str
    client_id: str
    ts: int
    tail: bytes
    recipients: tuple[str, ...]
    joins: tuple[str, ...] = ()
    leaves: tuple[str, ...] = ()


class PgGroups:
    def __init__(self, store: PgStore) -> None:
        self.store = store
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # A sender's group sends take their gseqs in the order they were submitted (sends
        # pipelined on one connection are stored in order): each waits for the one before.
        self._tails: dict[str, asyncio.Future[None]] = {}
        self.sink: FanoutSink | None = None  # where later completions are pushed from

    # ---- reads --------------------------------------------------------------------------
    async def get_group(self, gid: str) -> G.GroupState | None:
        row = await self.store._fetchrow(
            self.store.server_of(gid),
            "SELECT state FROM groups WHERE shard = $1 AND id = $2",
            shard_of(gid),
            gid,
        )
        return None if row is None else _state.decode(row[0])

    async def user_groups(self, user: str, limit: int) -> list[G.GroupState]:
        rows = await self.store._fetch(
            self.store.server_of(user),
            "SELECT gid FROM group_members WHERE shard = $1 AND owner = $2 ORDER BY gid LIMIT $3",
            shard_of(user),
            user,
            limit,
        )
        states = await asyncio.gather(*(self.get_group(r[0]) for r in rows))
        return [s for s in states if s is not None]

    # ---- the group's server: decide and record ------------------------------------------
    async def _on_group_server(self, gid: str, decide: Any) -> Any:
        store = self.store
        async with store._conn(store.server_of(gid)) as conn, conn.transaction():
            if shard_of(gid) in await frozen_shards(conn):
                raise store_unavailable()  # the group's shard is moving: retry
            row = await conn.fetchrow(
                "SELECT state, gseq FROM groups WHERE shard = $1 AND id = $2 FOR UPDATE",
                shard_of(gid),
                gid,
            )
            state = None if row is None else _state.decode(row[0])
            return await decide(conn, state, 0 if row is None else row[1])

    async def _record(self, conn: Conn, records: list[Record]) -> None:
        await conn.executemany(
            "INSERT INTO group_fanout (shard, gid, gseq, kind, author, client_id, ts, tail,"
            " recipients, joins, leaves, created) VALUES"
            " ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            [
                (
                    shard_of(r.gid),
                    r.gid,
                    r.gseq,
                    r.kind,
                    r.author,
                    r.client_id,
                    r.ts,
                    r.tail,
                    list(r.recipients),
                    list(r.joins),
                    list(r.leaves),
                    int(time.time() * 1000),
                )
                for r in records
            ],
        )

    async def _save(self, conn: Conn, state: G.GroupState, gseq: int, *, new: bool) -> None:
        if new:
            await conn.execute(
                "INSERT INTO groups (shard, id, state, gseq) VALUES ($1, $2, $3, $4)",
                shard_of(state.id),
                state.id,
                msgspec.msgpack.encode(state),
                gseq,
            )
        else:
            await conn.execute(
                "UPDATE groups SET state = $3, gseq = $4 WHERE shard = $1 AND id = $2",
                shard_of(state.id),
                state.id,
                msgspec.msgpack.encode(state),
                gseq,
            )

    def _events(
        self, state: G.GroupState, changes: list[G.Change], gseq: int, ts: int, old: set[str]
    ) -> list[Record]:
        out = []
        for change in changes:
            gseq += 1
            tail = message_tail(G.event_tail(state.id, state.name, change, ts))
            now = set(state.usernames)
            joins = tuple(u for u in change.recipients if u in now and u not in old)
            leaves = tuple(u for u in change.recipients if u not in now and u in old)
            old = now | old - set(leaves)
            out.append(
                Record(
                    state.id,
                    gseq,
                    KIND_GROUP_EVENT,
                    change.by,
                    "",
                    ts,
                    tail,
                    change.recipients,
                    joins,
                    leaves,
                )
            )
        return out

    async def _room(self, users: list[str], max_groups: int) -> None:
        """A soft check (before the group's transaction) of each user's group count."""
        by_server: dict[int, list[str]] = defaultdict(list)
        for user in users:
            by_server[self.store.server_of(user)].append(user)
        for server, names in by_server.items():
            rows = await self.store._fetch(
                server,
                "SELECT owner, count(*) FROM group_members"
                " WHERE shard = ANY($1::int2[]) AND owner = ANY($2::text[]) GROUP BY owner",
                [shard_of(u) for u in names],
                names,
            )
            for owner, count in rows:
                if count >= max_groups:
                    raise G.too_many_groups(owner, max_groups)

    async def create(self, op: CreateGroup) -> GroupResult:
        G.check_usernames(op.members)
        state, change = G.new_group(op.id, op.name, op.owner, op.members, op.ts, op.max_members)
        for user in state.usernames[1:]:
            if await self.store.get_user(user) is None:
                raise unknown_user(user)
        await self._room(list(state.usernames), op.max_groups)

        async def decide(conn: Conn, found: G.GroupState | None, gseq: int) -> list[Record]:
            if found is not None:
                raise CourierError("conflict", "A group with this id exists.", 409)
            records = self._events(state, [change], 0, op.ts, set())
            await self._save(conn, state, records[-1].gseq, new=True)
            await self._record(conn, records)
            return records

        records = await self._on_group_server(op.id, decide)
        return GroupResult(state, await self._complete_all(records))

    async def change(self, op: ChangeGroup) -> GroupResult:
        if op.kind == "add" and valid_username(op.member):
            if await self.store.get_user(op.member) is None:
                state = await self.get_group(op.id)
                if state is None:
                    raise G.unknown_group(op.id)
                G.check_adder(state, op.by)
                if state.member(op.member) is None:
                    raise unknown_user(op.member)
            await self._room([op.member], op.max_groups)

        async def decide(
            conn: Conn, state: G.GroupState | None, gseq: int
        ) -> tuple[G.GroupState | None, list[Record]]:
            if state is None:
                raise G.unknown_group(op.id)
            if op.kind == "rename":
                new, changes = G.rename(state, op.by, op.name)
            elif op.kind == "add":
                G.check_adder(state, op.by)
                if state.member(op.member) is None and not valid_username(op.member):
                    raise unknown_user(op.member)
                new, changes = G.add_member(
                    state, op.by, op.member, G.check_role(op.role), op.max_members
                )
            else:
                new, changes = G.remove_member(state, op.by, op.member)
            if not changes:
                return state, []
            records = self._events(new, changes, gseq, op.ts, set(state.usernames))
            if new.members:
                await self._save(conn, new, records[-1].gseq, new=False)
            else:  # the last member left
                await conn.execute(
                    "DELETE FROM groups WHERE shard = $1 AND id = $2", shard_of(op.id), op.id
                )
            await self._record(conn, records)
            return (new if new.members else None), records

        state, records = await self._on_group_server(op.id, decide)
        return GroupResult(state, await self._complete_all(records))

    async def send(self, op: AppendGroupMessage) -> SendResult:
        sender, gid = op.sender, op.group
        expired = False

        async def decide(conn: Conn, state: G.GroupState | None, gseq: int) -> Any:
            earlier = await conn.fetchval(
                "SELECT gseq FROM group_dedupe"
                " WHERE shard = $1 AND gid = $2 AND sender = $3 AND client_id = $4",
                shard_of(gid),
                gid,
                sender,
                op.client_id,
            )
            if earlier is not None:
                if not expired:
                    return None  # a retry: the original is (being) fanned out
                await conn.execute(  # its original expired: this one is new (as in 1:1)
                    "DELETE FROM group_dedupe WHERE shard = $1 AND gid = $2 AND sender = $3"
                    " AND client_id = $4",
                    shard_of(gid),
                    gid,
                    sender,
                    op.client_id,
                )
            if state is None or state.member(sender) is None:
                raise G.unknown_group(gid)
            gseq += 1
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
            record = Record(
                gid, gseq, KIND_GROUP_IN, sender, op.client_id, op.ts, tail, state.usernames
            )
            await conn.execute(
                "UPDATE groups SET gseq = $3 WHERE shard = $1 AND id = $2",
                shard_of(gid),
                gid,
                gseq,
            )
            await conn.execute(
                "INSERT INTO group_dedupe (shard, gid, sender, client_id, gseq)"
                " VALUES ($1, $2, $3, $4, $5)",
                shard_of(gid),
                gid,
                sender,
                op.client_id,
                gseq,
            )
            await self._record(conn, [record])
            return record

        before = self._tails.get(sender)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tails[sender] = mine
        try:
            if before is not None:
                await asyncio.shield(before)
            record = await self._on_group_server(gid, decide)
        finally:
            mine.set_result(None)
            if self._tails.get(sender) is mine:
                del self._tails[sender]
        if record is None:
            await self.complete_pending(self.store.server_of(gid), gid=gid, age_ms=0)
            original = await self._original(sender, op.client_id)
            if original is not None:
                return original
            if await self._pending(gid, sender, op.client_id):
                raise store_unavailable()  # its fan-out is not complete yet: retry
            expired = True  # fanned out, and the author's copy is gone: retention took it
            record = await self._on_group_server(gid, decide)
            if record is None:
                raise store_unavailable()
        seqs = await self._complete(record)
        sseq = seqs[sender]
        members = tuple(u for u in record.recipients if u in seqs)
        fanout = GroupFanout(gid, record.tail, members, tuple(seqs[u] for u in members))
        return SendResult(op.id, sseq, op.ts, op.client_id, False, (), fanout)

    async def _pending(self, gid: str, sender: str, client_id: str) -> bool:
        """Whether the send of (sender, client_id) in `gid` is still a fan-out record."""
        found = await self.store._fetchrow(
            self.store.server_of(gid),
            "SELECT 1 FROM group_dedupe d JOIN group_fanout f ON f.shard = d.shard"
            " AND f.gid = d.gid AND f.gseq = d.gseq WHERE d.shard = $1 AND d.gid = $2"
            " AND d.sender = $3 AND d.client_id = $4",
            shard_of(gid),
            gid,
            sender,
            client_id,
        )
        return found is not None

    async def _original(self, sender: str, client_id: str) -> SendResult | None:
        row = await self.store._fetchrow(
            self.store.server_of(sender),
            f"SELECT d.seq, {EVENT_SQL} FROM dedupe d JOIN timeline t ON t.shard = d.shard"
            f" AND t.owner = d.owner AND t.seq = d.seq{BODY_JOIN} WHERE d.shard = $1"
            " AND d.owner = $2 AND d.sender = $2 AND d.client_id = $3",
            shard_of(sender),
            sender,
            client_id,
        )
        if row is None:
            return None  # not written yet, or expired
        ev = peek(row[1])
        return SendResult(ev.id, row[0], ev.ts, client_id, True)

    # ---- the members' servers: apply, in gseq order, exactly once -----------------------
    async def _complete_all(self, records: list[Record]) -> tuple[Published, ...]:
        out: list[Published] = []
        for record in records:
            seqs = await self._complete(record)
            event_of = {u: with_seq(s, record.tail) for u, s in seqs.items()}
            out += [Published(u, s, event_of[u]) for u, s in seqs.items()]
        return tuple(out)

    async def _complete(self, record: Record) -> dict[str, int]:
        """Applies the record on every server of its recipients (the author's first: its seq
        goes into the others' rows), then deletes it. The recipients' seqs, for the push."""
        store = self.store
        by_server: dict[int, list[str]] = defaultdict(list)
        for user in record.recipients:
            by_server[store.server_of(user)].append(user)
        first = store.server_of(record.author)
        order = sorted(by_server, key=lambda s: (s != first, s))
        seqs: dict[str, int] = {}
        author_seq = 0
        missed = False
        async with self._locks[record.gid]:
            for server in order:
                try:
                    got = await self._apply(server, record, by_server[server], author_seq)
                except CourierError as exc:
                    if server == first or exc.status != 503:
                        raise
                    missed = True  # that server is away: the record stays for a later round
                    continue
                seqs.update(got)
                if server == first and record.kind == KIND_GROUP_IN:
                    author_seq = got.get(record.author, 0)
            if missed:
                return seqs
            await store._fetch(
                store.server_of(record.gid),
                "DELETE FROM group_fanout WHERE shard = $1 AND gid = $2 AND gseq = $3",
                shard_of(record.gid),
                record.gid,
                record.gseq,
            )
        return seqs

    async def _apply(
        self, server: int, record: Record, users: list[str], author_seq: int
    ) -> dict[str, int]:
        """One transaction on `server`: the group's earlier pending records there first,
        then this one. Returns this record's seqs (those claimed before included)."""
        store = self.store
        async with store._conn(server) as conn, conn.transaction():
            frozen = await frozen_shards(conn)
            if any(shard_of(u) in frozen for u in users):
                raise store_unavailable()  # a shard moving: the record waits for a retry
            for earlier in await self._pending_before(record):
                mine = [u for u in earlier.recipients if store.server_of(u) == server]
                if mine:
                    await _append(conn, earlier, mine, 0)
            return await _append(conn, record, users, author_seq)

    async def _pending_before(self, record: Record) -> list[Record]:
        rows = await self.store._fetch(
            self.store.server_of(record.gid),
            "SELECT gid, gseq, kind, author, client_id, ts, tail, recipients, joins, leaves"
            " FROM group_fanout WHERE shard = $1 AND gid = $2 AND gseq < $3 ORDER BY gseq",
            shard_of(record.gid),
            record.gid,
            record.gseq,
        )
        return [_record_of(r) for r in rows]

    async def complete_pending(
        self, server: int, *, gid: str | None = None, age_ms: int = PENDING_AGE_MS
    ) -> int:
        """Completes the fan-out records of `server` older than `age_ms` (a crashed node's, or
        a retry's original); idempotent, so any node may, even two at once."""
        cutoff = int(time.time() * 1000) - age_ms
        rows = await self.store._fetch(
            server,
            "SELECT gid, gseq, kind, author, client_id, ts, tail, recipients, joins, leaves"
            " FROM group_fanout WHERE created <= $1 AND ($2::text IS NULL OR gid = $2)"
            " ORDER BY gid, gseq LIMIT 1000",
            cutoff,
            gid,
        )
        for r in rows:
            record = _record_of(r)
            seqs = await self._complete(record)
            self._hand_over(record, seqs)
        return len(rows)

    def _hand_over(self, record: Record, seqs: dict[str, int]) -> None:
        """Events completed after their send are pushed too (clients drop what they have)."""
        if self.sink is None or not seqs:
            return
        members = tuple(u for u in record.recipients if u in seqs)
        try:
            if record.kind == KIND_GROUP_IN:
                fan = GroupFanout(record.gid, record.tail, members, tuple(seqs[u] for u in members))
                self.sink(fan)
            else:
                self.sink(
                    tuple(Published(u, seqs[u], with_seq(seqs[u], record.tail)) for u in members)
                )
        except Exception:
            log.exception("pushing a completed group fan-out failed")

    async def run_recovery(self, every: float = 3.0) -> None:
        while True:
            await asyncio.sleep(every)
            for server in range(len(self.store.servers)):
                try:
                    await self.complete_pending(server)
                except Exception as exc:
                    log.warning("completing group fan-outs of server %d: %r", server, exc)


def _record_of(r: Any) -> Record:
    return Record(
        r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6]), tuple(r[7]), tuple(r[8]), tuple(r[9])
    )


async def _append(conn: Conn, record: Record, users: list[str], author_seq: int) -> dict[str, int]:
    """Appends the record's event to `users`' timelines (on this connection's server), each
    once: claimed first by raising the member's watermark in the group (their conversation
    row's gseq). The body goes in once per server; each member's row names it. A fixed number
    of statements whatever the number of members. Returns every user's seq for the record,
    claimed now or before."""
    gid, gseq = record.gid, record.gseq
    users = sorted(users, key=lambda u: (shard_of(u), u))
    claimed = {
        r[0]
        for r in await conn.fetch(
            "INSERT INTO conversations AS c (shard, owner, peer, last_seq, in_total, read_seq,"
            " read_ordinal, gseq) SELECT s, o, $3, 0, 0, 0, 0, $4"
            " FROM unnest($1::int2[], $2::text[]) AS k(s, o)"
            " ON CONFLICT (shard, owner, peer) DO UPDATE SET gseq = EXCLUDED.gseq"
            " WHERE c.gseq < EXCLUDED.gseq RETURNING c.owner",
            [shard_of(u) for u in users],
            users,
            gid,
            gseq,
        )
    }
    seqs: dict[str, int] = {}
    if claimed:
        mine = [u for u in users if u in claimed]
        shards = [shard_of(u) for u in mine]
        heads = {
            r[0]: r[1]
            for r in await conn.fetch(
                "INSERT INTO heads AS h (shard, owner, seq)"
                " SELECT s, o, 1 FROM unnest($1::int2[], $2::text[]) AS k(s, o)"
                " ON CONFLICT (shard, owner) DO UPDATE SET seq = h.seq + 1"
                " RETURNING h.owner, h.seq",
                shards,
                mine,
            )
        }
        message = record.kind == KIND_GROUP_IN
        incoming = [1 if message and u != record.author else 0 for u in mine]
        totals = {
            r[0]: r[1]
            for r in await conn.fetch(
                "UPDATE conversations c SET last_seq = k.q, in_total = c.in_total + k.n"
                " FROM unnest($1::int2[], $2::text[], $4::bigint[], $5::bigint[]) AS k(s, o, q, n)"
                " WHERE c.shard = k.s AND c.owner = k.o AND c.peer = $3"
                " RETURNING c.owner, c.in_total",
                shards,
                mine,
                gid,
                [heads[u] for u in mine],
                incoming,
            )
        }
        await conn.execute(
            "INSERT INTO group_bodies (gid, gseq, ts, tail) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT DO NOTHING",
            gid,
            gseq,
            record.ts,
            record.tail,
        )
        if message and not author_seq and record.author in heads:
            author_seq = heads[record.author]  # the author is on this server: rows carry it
        kinds = [
            (KIND_GROUP_OWN if u == record.author else KIND_GROUP_IN)
            if message
            else KIND_GROUP_EVENT
            for u in mine
        ]
        await conn.execute(
            "INSERT INTO timeline (shard, owner, seq, kind, peer, counterpart, client_id, ts,"
            " ordinal, author, gseq) SELECT s, o, q, k, $3, $4, CASE WHEN k = $12 THEN $5 END,"
            " $6, n, $7, $8"
            " FROM unnest($1::int2[], $2::text[], $9::bigint[], $10::int2[], $11::bigint[])"
            " AS k(s, o, q, k, n)",
            shards,
            mine,
            gid,
            author_seq or None,
            record.client_id or None,
            record.ts,
            record.author,
            gseq,
            [heads[u] for u in mine],
            kinds,
            [totals[u] for u in mine],
            KIND_GROUP_OWN,  # only the author's row keeps the client_id (the mover's key)
        )
        if message and record.author in claimed:
            await conn.execute(
                "INSERT INTO dedupe (shard, owner, sender, client_id, seq)"
                " VALUES ($1, $2, $2, $3, $4) ON CONFLICT DO NOTHING",
                shard_of(record.author),
                record.author,
                record.client_id,
                heads[record.author],
            )
        joins = [u for u in record.joins if u in claimed]
        leaves = [u for u in record.leaves if u in claimed]
        if joins:
            await conn.execute(
                "INSERT INTO group_members (shard, owner, gid)"
                " SELECT s, o, $3 FROM unnest($1::int2[], $2::text[]) AS k(s, o)"
                " ON CONFLICT DO NOTHING",
                [shard_of(u) for u in joins],
                joins,
                gid,
            )
        if leaves:
            await conn.execute(
                "DELETE FROM group_members g USING unnest($1::int2[], $2::text[]) AS k(s, o)"
                " WHERE g.shard = k.s AND g.owner = k.o AND g.gid = $3",
                [shard_of(u) for u in leaves],
                leaves,
                gid,
            )
        seqs.update(heads)
    before = [u for u in users if u not in claimed]
    if before:
        # Applied earlier (a repeat): each one's row of the record, found from the newest
        # end of the member's conversation (records reach a server in gseq order, so it is
        # among the last few).
        for r in await conn.fetch(
            "SELECT k.o, t.seq FROM unnest($1::int2[], $2::text[]) AS k(s, o)"
            " CROSS JOIN LATERAL (SELECT seq FROM timeline t WHERE t.shard = k.s"
            "  AND t.owner = k.o AND t.peer = $3 AND t.kind <> 3 AND t.gseq = $4"
            "  ORDER BY t.seq DESC LIMIT 1) AS t",
            [shard_of(u) for u in before],
            before,
            gid,
            gseq,
        ):
            seqs[r[0]] = r[1]
    return seqs

"""Moving one logical shard to another PostgreSQL server while the cluster keeps serving.

1. Copy: every row `WHERE shard = X` from the source to the target, re-runnable (timeline and
   dedupe rows are inserted `ON CONFLICT DO NOTHING`; the other tables are mirrored).
2. Catch up: copy again what changed meanwhile, until a round moves few rows. The timeline is
   append-only, so a round copies each owner's rows above what it copied before (one
   repeatable-read snapshot per round: a head and the rows below it agree), with the dedupe
   keys of those rows (and the keys a retry will look for once a sender and its recipient no
   longer share a server, see `_Mover._append_chunk`); heads, conversations, acks, receipt
   markers, users, tokens and sessions are mirrored whole, deletions included (a token revoked
   meanwhile stays revoked).
3. Freeze the shard on the source (`shard_fence`, under the exclusive fence lock, which waits
   for the writer batches in flight); from then on nodes hold the shard's writes back.
4. Copy the final delta, now stable, and check that the target holds every row.
5. Flip the map in the directory (`server`, `version + 1`) and `NOTIFY courier_shard_map`;
   nodes reread the map and send the held writes to the target.
6. Drain: after a grace period (longer than the nodes' map refresh, so even a node that missed
   the notification reads from the target by then) delete the shard's rows on the source.
   The fence stays frozen there, so a node with a stale map can never write to the old
   server; moving the shard back later unfreezes it.

A failure before the flip unfreezes the source and leaves the map as it was; the copy on the
target is harmless (nothing reads it) and the next attempt reuses it. One move runs at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from courier.adapters.pg_movefence import MAP_CHANNEL
from courier.adapters.pg_schema import (
    FENCE_LOCK,
    KIND_GROUP_OWN,
    KIND_IN,
    KIND_OUT,
    MIGRATION_LOCK,
    migrate,
)
from courier.adapters.pg_shardmap import read_shard_map
from courier.domain.shards import LOGICAL_SHARDS, shard_of

# One move at a time in the cluster, on the directory: a move writes keys of the source's other
# shards (see `_Mover._append_chunk`), which must not be moving themselves.
_MOVE_LOCK = MIGRATION_LOCK + 2
# Tables whose rows carry the owner's shard, and how a round copies them.
APPENDED = ("timeline", "dedupe")
MIRRORED = (
    "users",
    "user_terms",
    "blocks",
    "tokens",
    "sessions",
    "heads",
    "conversations",
    "acks",
    "receipts",
    "groups",
    "group_members",
    "group_fanout",
    "group_dedupe",
)
_NOT_MOVED = ("shard_map", "shard_fence")
_CHUNK = 5000


class ShardMoveError(Exception):
    """The move cannot start or cannot finish; the map is unchanged."""


@dataclass
class MoveReport:
    shard: int
    source: int
    target: int
    version: int = 0
    rounds: int = 0
    rows: dict[str, int] = field(default_factory=dict)  # the shard's rows on the target
    copied: dict[str, int] = field(default_factory=dict)  # rows written by the copy rounds
    drained: dict[str, int] = field(default_factory=dict)  # rows deleted on the source
    seconds: float = 0.0
    frozen_seconds: float = 0.0  # from the freeze to the flip: writes of the shard wait

    def as_dict(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "from": self.source,
            "to": self.target,
            "version": self.version,
            "rounds": self.rounds,
            "rows": self.rows,
            "copied": self.copied,
            "drained": self.drained,
            "seconds": round(self.seconds, 3),
            "frozen_seconds": round(self.frozen_seconds, 3),
        }


@dataclass
class _Table:
    name: str
    columns: list[str]
    key: list[str]


async def move_shard(
    dsns: Sequence[str],
    shard: int,
    target: int,
    *,
    grace: float = 10.0,
    small: int = 200,
    max_rounds: int = 8,
    drain: bool = True,
) -> MoveReport:
    """Move logical `shard` onto server `target` (an index into `dsns`, the directory
    first); see the module docstring for the steps."""
    if not 0 <= shard < LOGICAL_SHARDS:
        raise ShardMoveError(f"shard must be 0..{LOGICAL_SHARDS - 1}")
    if not 0 <= target < len(dsns):
        raise ShardMoveError(f"server must be 0..{len(dsns) - 1}")
    started = time.perf_counter()
    conns: dict[int, asyncpg.Connection] = {}
    source_writer: asyncpg.Connection | None = None
    try:
        directory = conns[0] = await asyncpg.connect(dsns[0], timeout=10)
        if not await directory.fetchval("SELECT pg_try_advisory_lock($1)", _MOVE_LOCK):
            raise ShardMoveError("another shard move is running (one at a time)")
        if not await directory.fetchval("SELECT to_regclass('shard_map') IS NOT NULL"):
            raise ShardMoveError("the directory has no shard map yet: start a node first")
        shard_map = await read_shard_map(directory, len(dsns))
        source = shard_map.server_of_shard(shard)
        if source == target:
            raise ShardMoveError(f"shard {shard} is already on server {target}")
        for index in (source, target):
            if index not in conns:
                conns[index] = await asyncpg.connect(dsns[index], timeout=10)
            await migrate(conns[index])  # the fence exists on servers of an older schema
        source_writer = await asyncpg.connect(dsns[source], timeout=10)
        report = MoveReport(shard, source, target)
        neighbours = frozenset(shard_map.shards_on(source)) - {shard}
        mover = _Mover(conns[source], conns[target], shard, report)
        mover.source_writer, mover.neighbours = source_writer, neighbours
        await mover.run(directory, small=small, max_rounds=max_rounds)
        report.seconds = time.perf_counter() - started
        if drain:
            await asyncio.sleep(grace)
            report.drained = await drain_shard(conns[source], shard)
        report.seconds = time.perf_counter() - started
        return report
    finally:
        for conn in [*conns.values(), *([source_writer] if source_writer else [])]:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 10)


async def drain_shard(source: asyncpg.Connection, shard: int) -> dict[str, int]:
    """Delete a moved shard's rows on its old server, a chunk per transaction."""
    out: dict[str, int] = {}
    for name in (*APPENDED, *MIRRORED):
        total = 0
        while True:
            status = await source.execute(
                f"DELETE FROM {name} WHERE ctid = ANY(ARRAY("
                f"SELECT ctid FROM {name} WHERE shard = $1 LIMIT {_CHUNK}))",
                shard,
            )
            done = int(status.split()[-1])
            total += done
            if done < _CHUNK:
                break
        out[name] = total
    return out


class _Mover:
    def __init__(
        self,
        source: asyncpg.Connection,
        target: asyncpg.Connection,
        shard: int,
        report: MoveReport,
    ) -> None:
        self.source = source
        self.target = target
        self.shard = shard
        self.report = report
        self.tables: dict[str, _Table] = {}
        self.copied: dict[str, int] = {}  # owner -> highest timeline seq copied
        self.source_writer: asyncpg.Connection | None = None
        self.neighbours: frozenset[int] = frozenset()  # the source's other shards

    async def run(self, directory: asyncpg.Connection, *, small: int, max_rounds: int) -> None:
        await self._describe()
        # A shard that once lived on the target and moved away left its fence frozen there.
        await self.target.execute(
            "UPDATE shard_fence SET frozen = false WHERE shard = $1", self.shard
        )
        while True:
            changed = await self._round()
            if changed <= small or self.report.rounds >= max_rounds:
                break
        await self._set_frozen(True)
        frozen_at = time.perf_counter()
        try:
            async with self.target.transaction():  # the final delta: one commit on the target
                await self._round()
            await self._verify()
            async with directory.transaction():
                version = await directory.fetchval(
                    "UPDATE shard_map SET server = $2, version = version + 1"
                    " WHERE shard = $1 AND server = $3 RETURNING version",
                    self.shard,
                    self.report.target,
                    self.report.source,
                )
                if version is None:
                    raise ShardMoveError("the shard map changed during the move")
                await directory.execute(
                    "SELECT pg_notify($1, $2)", MAP_CHANNEL, f"{self.shard} {version}"
                )
        except BaseException:
            with contextlib.suppress(Exception):
                await self._set_frozen(False)
            raise
        self.report.version = int(version)
        self.report.frozen_seconds = time.perf_counter() - frozen_at

    async def _describe(self) -> None:
        """Columns and keys from the catalog, so a later migration's columns move too; a
        sharded table the mover does not know stops it rather than being left behind."""
        rows = await self.source.fetch(
            "SELECT c.relname, array_agg(a.attname::text ORDER BY a.attnum) AS cols,"
            " (SELECT array_agg(k.attname::text) FROM pg_index i JOIN pg_attribute k"
            "  ON k.attrelid = i.indrelid AND k.attnum = ANY(i.indkey)"
            "  WHERE i.indrelid = c.oid AND i.indisprimary) AS pk"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
            " WHERE n.nspname = current_schema() AND c.relkind = 'r'"
            " GROUP BY c.relname, c.oid"
        )
        for r in rows:
            if "shard" in r["cols"] and r["relname"] not in _NOT_MOVED:
                self.tables[r["relname"]] = _Table(r["relname"], list(r["cols"]), list(r["pk"]))
        unknown = set(self.tables) - set(APPENDED) - set(MIRRORED)
        if unknown:
            raise ShardMoveError(f"tables the mover does not know: {sorted(unknown)}")

    async def _set_frozen(self, frozen: bool) -> None:
        async with self.source.transaction():
            await self.source.execute("SET LOCAL lock_timeout = '30s'")
            await self.source.execute("SELECT pg_advisory_xact_lock($1)", FENCE_LOCK)
            await self.source.execute(
                "INSERT INTO shard_fence (shard, frozen) VALUES ($1, $2)"
                " ON CONFLICT (shard) DO UPDATE SET frozen = EXCLUDED.frozen",
                self.shard,
                frozen,
            )

    async def _round(self) -> int:
        """One pass over the shard in one snapshot of the source; the rows it changed."""
        self.report.rounds += 1
        changed = 0
        async with self.source.transaction(isolation="repeatable_read", readonly=True):
            heads = await self.source.fetch(
                "SELECT owner, seq FROM heads WHERE shard = $1", self.shard
            )
            todo = [
                (r[0], self.copied.get(r[0], 0)) for r in heads if r[1] > self.copied.get(r[0], 0)
            ]
            if todo:
                changed += await self._append_rows(todo)
            for r in heads:
                self.copied[r[0]] = max(self.copied.get(r[0], 0), r[1])
            for name in MIRRORED:
                changed += await self._mirror(self.tables[name])
        return changed

    async def _append_rows(self, todo: list[tuple[str, int]]) -> int:
        """Timeline rows above what was copied, per owner, with their dedupe keys."""
        timeline = self.tables["timeline"]
        cols = ", ".join(f"t.{c}" for c in timeline.columns)
        query = (
            f"SELECT {cols} FROM unnest($2::text[], $3::bigint[]) AS k(o, s)"
            " JOIN timeline t ON t.shard = $1 AND t.owner = k.o AND t.seq > k.s"
        )
        changed = 0
        chunk: list[asyncpg.Record] = []
        cursor = self.source.cursor(
            query, self.shard, [o for o, _ in todo], [s for _, s in todo], prefetch=_CHUNK
        )
        async for record in cursor:
            chunk.append(record)
            if len(chunk) >= _CHUNK:
                changed += await self._append_chunk(chunk)
                chunk = []
        if chunk:
            changed += await self._append_chunk(chunk)
        return changed

    async def _append_chunk(self, rows: list[asyncpg.Record]) -> int:
        # The dedupe key of a copy: (owner, owner, client_id) on an outgoing copy (a group
        # message's author's too), (owner, sender, client_id) on an incoming one (a
        # same-server send has none).
        outgoing = (KIND_OUT, KIND_GROUP_OWN)
        keys = [
            (r["owner"], r["owner"] if r["kind"] in outgoing else r["peer"], r["client_id"])
            for r in rows
            if r["client_id"] is not None and r["kind"] in (KIND_IN, *outgoing)
        ]
        dedupe = self.tables["dedupe"]
        found = await self.source.fetch(
            f"SELECT {', '.join(f'd.{c}' for c in dedupe.columns)}"
            " FROM unnest($2::text[], $3::text[], $4::text[]) AS k(o, s, c)"
            " JOIN dedupe d ON d.shard = $1 AND d.owner = k.o AND d.sender = k.s"
            " AND d.client_id = k.c",
            self.shard,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
        )
        # A send between two users of one server is one operation, and only the sender's
        # copy gets a key. Once the two are on different servers a retry goes through the
        # recipient's half, which looks for the recipient's key: make that key wherever it
        # is missing, here for the moving shard's incoming copies, on the source for its
        # neighbours' copies of messages sent from the moving shard (before the map switch,
        # so no such retry can come first).
        have = {(d["owner"], d["sender"], d["client_id"]) for d in found}
        made: dict[tuple[str, str, str], int] = {}
        for r in rows:
            key = (r["owner"], r["peer"], r["client_id"])
            if r["kind"] == KIND_IN and r["client_id"] is not None and key not in have:
                made.setdefault(key, r["seq"])
        synthesized = [
            tuple(
                {"shard": self.shard, "owner": o, "sender": p, "client_id": c, "seq": q}[col]
                for col in dedupe.columns
            )
            for (o, p, c), q in made.items()
        ]
        copied = self.report.copied
        bodies = await self._copy_bodies(rows)
        copied["group_bodies"] = copied.get("group_bodies", 0) + bodies
        n = await self._write(self.tables["timeline"], rows, mirror=False)
        copied["timeline"] = copied.get("timeline", 0) + n
        d = await self._write(dedupe, [*found, *synthesized], mirror=False)
        copied["dedupe"] = copied.get("dedupe", 0) + d
        await self._neighbour_keys(rows)
        return n + d

    async def _copy_bodies(self, rows: list[asyncpg.Record]) -> int:
        """The group bodies these rows name (stored once per server, shared by its shards):
        onto the target when it has not got them yet; the source keeps its own."""
        named = sorted({(r["peer"], r["gseq"]) for r in rows if r["gseq"] is not None})
        if not named:
            return 0
        found = await self.source.fetch(
            "SELECT b.gid, b.gseq, b.ts, b.tail FROM unnest($1::text[], $2::bigint[]) AS k(g, q)"
            " JOIN group_bodies b ON b.gid = k.g AND b.gseq = k.q",
            [g for g, _ in named],
            [q for _, q in named],
        )
        if not found:
            return 0
        status = await self.target.execute(
            "INSERT INTO group_bodies (gid, gseq, ts, tail)"
            " SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bytea[])"
            " ON CONFLICT DO NOTHING",
            *(list(column) for column in zip(*found, strict=True)),
        )
        return int(status.split()[-1])

    async def _neighbour_keys(self, rows: list[asyncpg.Record]) -> None:
        """The keys of neighbours' incoming copies of messages this shard's users sent them
        in one operation (their outgoing copies know the incoming seq: `counterpart`)."""
        sent = [
            (shard_of(r["peer"]), r["peer"], r["owner"], r["client_id"], r["counterpart"])
            for r in rows
            if r["kind"] == KIND_OUT and r["client_id"] is not None and r["counterpart"] is not None
        ]
        sent = [k for k in sent if k[0] in self.neighbours]
        if not sent or self.source_writer is None:
            return
        status = await self.source_writer.execute(
            "INSERT INTO dedupe (shard, owner, sender, client_id, seq)"
            " SELECT t.shard, t.owner, t.peer, t.client_id, t.seq"
            " FROM unnest($1::int2[], $2::text[], $3::text[], $4::text[], $5::bigint[])"
            " AS k(h, r, s, c, q) JOIN timeline t ON t.shard = k.h AND t.owner = k.r"
            " AND t.seq = k.q AND t.kind = 1 AND t.peer = k.s AND t.client_id = k.c"
            " ON CONFLICT DO NOTHING",
            *(list(column) for column in zip(*sent, strict=True)),
        )
        made = self.report.copied
        made["source_keys"] = made.get("source_keys", 0) + int(status.split()[-1])

    async def _mirror(self, table: _Table) -> int:
        rows = await self.source.fetch(
            f"SELECT {', '.join(table.columns)} FROM {table.name} WHERE shard = $1", self.shard
        )
        return await self._write(table, rows, mirror=True)

    async def _write(self, table: _Table, rows: Sequence[Any], *, mirror: bool) -> int:
        """Rows into the target through a temporary table: inserted when new; when
        `mirror`, also updated when different and deleted when gone from the source."""
        if not rows and not mirror:
            return 0
        temp = f"courier_move_{table.name}"
        cols = ", ".join(table.columns)
        key = ", ".join(table.key)
        rest = [c for c in table.columns if c not in table.key]
        if mirror and rest:
            sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in rest)
            old = ", ".join(f"t.{c}" for c in rest)
            new = ", ".join(f"EXCLUDED.{c}" for c in rest)
            conflict = f"DO UPDATE SET {sets} WHERE ({old}) IS DISTINCT FROM ({new})"
        else:
            conflict = "DO NOTHING"
        changed = 0
        async with self.target.transaction():
            await self.target.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {temp} (LIKE {table.name}) ON COMMIT DELETE ROWS"
            )
            await self.target.execute(f"DELETE FROM {temp}")  # within an outer transaction too
            if rows:
                await self.target.copy_records_to_table(
                    temp, records=[tuple(r) for r in rows], columns=table.columns
                )
            status = await self.target.execute(
                f"INSERT INTO {table.name} AS t ({cols}) SELECT {cols} FROM {temp}"
                f" ON CONFLICT ({key}) {conflict}"
            )
            changed += int(status.split()[-1])
            if mirror:
                match = " AND ".join(f"m.{c} = t.{c}" for c in table.key)
                status = await self.target.execute(
                    f"DELETE FROM {table.name} AS t WHERE t.shard = $1"
                    f" AND NOT EXISTS (SELECT 1 FROM {temp} AS m WHERE {match})",
                    self.shard,
                )
                changed += int(status.split()[-1])
        if mirror:
            self.report.copied[table.name] = self.report.copied.get(table.name, 0) + changed
        return changed

    async def _verify(self) -> None:
        """With the source frozen, the target must hold at least every row of the shard
        (more only where retention deleted rows on the source meanwhile). A table short of
        rows is copied again whole before giving up."""
        for name in (*APPENDED, *MIRRORED):
            have = await self._count(self.target, name)
            want = await self._count(self.source, name)
            if have < want:
                await self._copy_whole(self.tables[name])
                have = await self._count(self.target, name)
                if have < want:
                    raise ShardMoveError(f"{name}: {have} rows copied of {want}")
            self.report.rows[name] = have

    async def _copy_whole(self, table: _Table) -> None:
        async with self.source.transaction(isolation="repeatable_read", readonly=True):
            chunk: list[asyncpg.Record] = []
            query = f"SELECT {', '.join(table.columns)} FROM {table.name} WHERE shard = $1"
            async for record in self.source.cursor(query, self.shard, prefetch=_CHUNK):
                chunk.append(record)
                if len(chunk) >= _CHUNK:
                    await self._write(table, chunk, mirror=False)
                    chunk = []
            if chunk:
                await self._write(table, chunk, mirror=False)

    async def _count(self, conn: asyncpg.Connection, name: str) -> int:
        value: int = await conn.fetchval(
            f"SELECT count(*) FROM {name} WHERE shard = $1", self.shard
        )
        return value


async def where(dsns: Sequence[str], key: str) -> dict[str, Any]:
    """The shard of a user (or any key) and the server the directory places it on."""
    directory = await asyncpg.connect(dsns[0], timeout=10)
    try:
        shard_map = await read_shard_map(directory, len(dsns))
    finally:
        await directory.close()
    shard = shard_of(key)
    return {
        "key": key,
        "shard": shard,
        "server": shard_map.server_of_shard(shard),
        "version": shard_map.version_of_shard(shard),
    }

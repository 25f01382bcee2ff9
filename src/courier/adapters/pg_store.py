"""The cluster store: PostgreSQL through asyncpg, 1000 logical shards on N physical servers.

Placement: a user's rows live on the server of `shard_of(user)` per the shard map kept in the
first server (the directory); a token's row on the server of `shard_of(token_hash)`, so a
bearer token is resolved without knowing its user, and the same login's session row on the
user's server, so a user's sessions are one read (see pg_sessions for how the two agree).

Writes: one writer task per server drains that server's queue and applies everything queued
(up to `batch_max`) in one transaction: one commit, one WAL flush, whatever the batch size.
A send whose two timelines sit on one server is one operation there. Across servers it is
two: the recipient's copy first, then, once that is durable, the sender's copy, each
idempotent on its own (owner, sender, client_id) key, so a client's retry after a crash
between the two completes the pair exactly once. The sender's halves go out in the order
their sends were submitted (a chain per sender), which keeps per-connection order and lets
the first of two racing retries be the original.

An incoming copy written on another server than its outgoing copy does not know the sender's
seq yet; readers that need it (receipts) look it up by client_id on the sender's server. One
difference from the embedded store follows from writing the recipient's half first: a
client_id reused for a *different* recipient is still answered as a duplicate, but leaves a
stray incoming copy with that second recipient (the embedded store writes nothing).

Reads go straight to the owner's server through a connection pool; the pool reconnects by
itself, and an unreachable server answers `store_unavailable` (503) meanwhile.

While a shard moves to another server (`courier shard move`), writes that meet its fence on
the old server are held and sent again, in order, once the map names the new one; see
pg_movefence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import asyncpg

from courier.adapters.pg_batch import (
    Incoming,
    Pair,
    PgBatch,
    RecipientSide,
    Resolve,
    SenderSide,
    ServerOp,
    SweepUsers,
    sweep_users,
)
from courier.adapters.pg_groups import PgGroups
from courier.adapters.pg_movefence import (
    Bounced,
    MapFollower,
    fence_ops,
    fence_sweep,
    frozen_shards,
    merge_fenced,
    op_shards,
)
from courier.adapters.pg_profiles import PgProfiles
from courier.adapters.pg_schema import (
    BODY_JOIN,
    EVENT_SQL,
    HAS_EVENT,
    KIND_GROUP_IN,
    KIND_IN,
    Conn,
    migrate,
)
from courier.adapters.pg_sessions import halves
from courier.adapters.pg_shardmap import ShardMap, load_shard_map
from courier.domain.errors import store_unavailable
from courier.domain.groups import RECEIPTS_MAX_MEMBERS, GroupState, is_group
from courier.domain.ops import (
    AdvanceAck,
    AppendGroupMessage,
    AppendMessage,
    AppendReceipt,
    ChangeGroup,
    Conversation,
    CreateGroup,
    CreateUser,
    DeleteToken,
    MarkRead,
    PutToken,
    SessionRecord,
    SetBlock,
    SetLastSeen,
    SetProfile,
    Sweep,
    TokenRecord,
    TouchToken,
    UserRecord,
    WriteOp,
)
from courier.domain.shards import shard_of
from courier.metrics import Metrics
from courier.ports import FanoutSink

log = logging.getLogger(__name__)

# Errors that mean "the server is not there right now", as opposed to a bad statement.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
)
# Errors of a batch that raced another node's batch: the same batch again sees its result.
_RACES = (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError)
_NO_SEQ = (1 << 63) - 1
GROUP_SIZE_TTL = 5.0  # seconds a group's member count is remembered (receipts or not)
# The writer only looks rows up by key. Statistics of tables that grow by thousands of rows a
# second are always stale, and a planner that believes a table small picks a hash join over a
# full scan of it; on this connection, key lookups are the only plan.
_WRITER_SETTINGS = {"enable_hashjoin": "off", "enable_mergejoin": "off", "enable_seqscan": "off"}


@dataclass(eq=False)
class _Item:
    op: ServerOp | SweepUsers | None  # None stops the writer
    fut: asyncio.Future[Any] | None


@dataclass(eq=False)
class _Link:
    """A send waiting in its sender's chain until its recipient half is durable."""

    op: AppendMessage
    fut: asyncio.Future[Any]
    pair: bool
    ready: bool = False
    incoming: Incoming | None = None
    error: BaseException | None = None


class _Writer:
    """The single writer of one server for this node: queue in, one transaction per batch.

    It keeps a connection of its own (no pool checkout and reset per batch) and opens a new
    one after a failure; while the server is away a probe retries every second, so `healthy`
    comes back without waiting for traffic.
    """

    def __init__(self, store: PgStore, index: int, dsn: str) -> None:
        self.store = store
        self.index = index
        self.dsn = dsn
        self.conn: asyncpg.Connection | None = None
        self.items: deque[_Item] = deque()
        self.wake = asyncio.Event()
        self.failed = False
        self.known_users: set[str] = set()
        self.task: asyncio.Task[None] | None = None
        self.probe: asyncio.Task[None] | None = None

    async def connection(self) -> asyncpg.Connection:
        if self.conn is None or self.conn.is_closed():
            self.conn = await asyncpg.connect(
                self.dsn, timeout=5, command_timeout=60, server_settings=_WRITER_SETTINGS
            )
        return self.conn

    def drop_connection(self) -> None:
        if self.conn is not None:
            self.conn.terminate()
            self.conn = None

    def mark_failed(self) -> None:
        self.failed = True
        self.drop_connection()
        if self.probe is None or self.probe.done():
            self.probe = asyncio.create_task(self.reconnect())

    async def reconnect(self) -> None:
        while self.failed:
            await asyncio.sleep(1.0)
            try:
                conn = await asyncpg.connect(self.dsn, timeout=5)
                await conn.close()
            except Exception:
                continue
            self.failed = False

    async def stop(self) -> None:
        if self.probe is not None:
            self.probe.cancel()
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.conn.close(), 10)
            self.conn = None

    def put(self, op: ServerOp | SweepUsers | None, fut: asyncio.Future[Any] | None) -> None:
        self.items.append(_Item(op, fut))
        self.wake.set()

    async def run(self) -> None:
        while True:
            while not self.items:
                self.wake.clear()
                await self.wake.wait()
            if self.items[0].op is None:
                return
            if isinstance(self.items[0].op, SweepUsers):
                batch = [self.items.popleft()]
            else:
                batch = []
                while (
                    self.items
                    and len(batch) < self.store.batch_max
                    and self.items[0].op is not None
                    and not isinstance(self.items[0].op, SweepUsers)
                ):
                    batch.append(self.items.popleft())
            try:
                await self.commit(batch)
            except Exception:  # never let the writer die: its queue would hang forever
                log.exception("store writer %d: unexpected failure", self.index)
                for item in batch:
                    if item.fut is not None and not item.fut.done():
                        item.fut.set_exception(store_unavailable())

    async def commit(self, items: list[_Item], *, retried: bool = False) -> None:
        started = time.perf_counter()
        try:
            results = await self.apply([item.op for item in items])
        except _UNREACHABLE:
            log.warning(
                "store server %d unreachable; failing %d operations", self.index, len(items)
            )
            self.mark_failed()
            results = [store_unavailable()] * len(items)
        except Exception as exc:
            self.failed = False  # the server answered, with an error
            if len(items) > 1:
                # Isolate the operation that failed: each one again in a batch of its own.
                log.warning(
                    "store batch failed (%r); retrying its %d operations one by one",
                    exc,
                    len(items),
                )
                for item in items:
                    if self.failed and item.fut is not None and not item.fut.done():
                        item.fut.set_exception(store_unavailable())  # the server went away
                    elif not self.failed:
                        await self.commit([item])
                return
            if isinstance(exc, _RACES) and not retried:
                # Another node took the same key or the same locks meanwhile: once more.
                await self.commit(items, retried=True)
                return
            log.exception("store operation failed: %r", items[0].op)
            results = [store_unavailable()]
        else:
            self.failed = False
        metrics = self.store.metrics
        if metrics is not None:
            metrics.store_batch_size.observe(len(items))
            metrics.store_commit_seconds.observe(time.perf_counter() - started)
        for item, result in zip(items, results, strict=True):
            if item.fut is None or item.fut.done():
                continue
            if isinstance(result, Resolve):
                self.store.resolve_later(item.fut, result)
            elif isinstance(result, Bounced):
                assert isinstance(item.op, ServerOp)
                self.store.bounce(self.index, result.shard, item.op, item.fut)
            elif isinstance(result, BaseException):
                item.fut.set_exception(result)
            else:
                item.fut.set_result(result)

    async def apply(self, ops: list[ServerOp | SweepUsers | None]) -> list[Any]:
        conn = await self.connection()
        async with conn.transaction():
            frozen = await frozen_shards(conn)
            if len(ops) == 1 and isinstance(ops[0], SweepUsers):
                return [await sweep_users(conn, fence_sweep(ops[0], frozen))]
            batch = PgBatch(conn, self.known_users)
            todo = [op for op in ops if not isinstance(op, SweepUsers | None)]
            senders = self.store.held_senders
            if frozen or senders:  # shards moving away: their writes go to their new servers
                todo, marks = fence_ops(todo, frozen, senders)
                results = merge_fenced(marks, await batch.run(todo) if todo else [])
            else:
                results = await batch.run(todo)
        if len(self.known_users) > 200_000:
            self.known_users.clear()
        self.known_users.update(batch.new_users)
        return results


class PgStore:
    """The `Store` port on PostgreSQL servers; see the module docstring for the layout."""

    def __init__(
        self,
        dsns: list[str],
        *,
        metrics: Metrics | None = None,
        batch_max: int = 1000,
        pool_size: int = 8,
        map_refresh: float = 5.0,
    ) -> None:
        if not dsns:
            raise ValueError("PgStore needs at least one server")
        self._dsns = list(dsns)
        self.metrics = metrics
        self.batch_max = batch_max
        self._pool_size = pool_size
        self._pools: list[asyncpg.Pool] = []
        self._writers: list[_Writer] = []
        self._map: ShardMap | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._chains: dict[str, deque[_Link]] = {}
        self._pending: set[asyncio.Future[Any]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._map_refresh = map_refresh
        self._follower: MapFollower | None = None
        self.groups = PgGroups(self)
        self.profiles = PgProfiles(self)
        self._sizes: dict[str, tuple[int, float]] = {}
        self._recovery: asyncio.Task[None] | None = None

    # ---- lifecycle ----------------------------------------------------------------------
    async def open(self) -> None:
        try:
            for dsn in self._dsns:
                pool = await asyncpg.create_pool(
                    dsn, min_size=1, max_size=self._pool_size, timeout=5, command_timeout=60
                )
                self._pools.append(pool)
            for pool in self._pools:
                async with pool.acquire() as conn:
                    await migrate(conn)
            async with self._pools[0].acquire() as directory:
                self._map = await load_shard_map(directory, len(self._dsns))
        except BaseException as exc:
            await self._close_pools()
            if isinstance(exc, _UNREACHABLE):
                raise store_unavailable() from exc
            raise
        self._loop = asyncio.get_running_loop()
        for index, dsn in enumerate(self._dsns):
            writer = _Writer(self, index, dsn)
            writer.task = asyncio.create_task(writer.run(), name=f"courier-pg-writer-{index}")
            self._writers.append(writer)
        self._follower = MapFollower(self, self._dsns[0], refresh=self._map_refresh)
        self._follower.start()
        await self._list_old_tokens()
        for server in range(len(self._pools)):  # fan-outs a stopped node left
            try:
                await self.groups.complete_pending(server, age_ms=0)
            except Exception as exc:
                log.warning("completing group fan-outs of server %d: %r", server, exc)
        self._recovery = asyncio.create_task(self.groups.run_recovery())

    async def close(self) -> None:
        """Finish what was submitted (both halves of every send), then stop."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
            self._recovery = None
        if self._follower is not None:
            await self._follower.stop()
            self._follower = None
        for writer in self._writers:
            writer.put(None, None)
        for writer in self._writers:
            if writer.task is not None:
                await writer.task
            await writer.stop()
        self._writers = []
        self._loop = None
        await self._close_pools()

    async def _close_pools(self) -> None:
        pools, self._pools = self._pools, []
        for pool in pools:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 10)

    @property
    def healthy(self) -> bool:
        return bool(self._writers) and not any(w.failed for w in self._writers)

    @property
    def shard_map(self) -> ShardMap:
        if self._map is None:
            raise store_unavailable()
        return self._map

    def server_of(self, key: str | bytes) -> int:
        """The physical server holding `key` (a username or a token hash)."""
        return self.shard_map.server_of(key)

    # ---- shard moves (see pg_movefence) -------------------------------------------------
    @property
    def servers(self) -> list[str]:
        return list(self._dsns)

    def directory_pool(self) -> asyncpg.Pool:
        if not self._pools:
            raise store_unavailable()
        return self._pools[0]

    def set_shard_map(self, new: ShardMap) -> None:
        self._map = new

    async def barrier(self, server: int) -> None:
        """Return once everything put on `server`'s writer so far was applied or bounced."""
        assert self._loop is not None
        done: asyncio.Future[Any] = self._loop.create_future()
        self._writers[server].put(SweepUsers((), 0), done)
        with contextlib.suppress(Exception):
            await done

    def bounce(self, server: int, shard: int, op: ServerOp, fut: asyncio.Future[Any]) -> None:
        assert self._follower is not None
        self._follower.bounce(server, shard, op, fut)

    @property
    def held_senders(self) -> dict[str, int]:
        return {} if self._follower is None else self._follower.senders

    def redispatch(self, held: list[tuple[ServerOp, asyncio.Future[Any]]]) -> None:
        """Held writes again, in order, under the current map. A sender's halves go back to
        the front of its chain: they are older than anything still waiting there."""
        fronts: dict[str, list[_Link]] = {}
        for op, fut in held:
            if fut.done():
                continue
            if isinstance(op, Pair | SenderSide):
                incoming = op.incoming if isinstance(op, SenderSide) else None
                link = _Link(op.op, fut, isinstance(op, Pair), ready=True, incoming=incoming)
                if self._moved(link):
                    self._split(link)  # its recipient half now, in turn with the others
                fronts.setdefault(op.op.sender, []).append(link)
            else:
                self._route(op, fut)
        for sender, links in fronts.items():
            self._chains.setdefault(sender, deque()).extendleft(reversed(links))
            self._pump(sender)

    def _route(self, op: ServerOp, fut: asyncio.Future[Any]) -> None:
        """Put `op` on the writer of its shard's server, or hold it while that shard moves."""
        follower = self._follower
        if follower is not None and follower.holds and follower.held(op, fut):
            return
        self._writers[self.shard_map.server_of_shard(op_shards(op)[0])].put(op, fut)

    # ---- writes -------------------------------------------------------------------------
    def submit(self, op: WriteOp) -> asyncio.Future[Any]:
        loop = self._loop
        if loop is None or not self._writers:
            raise store_unavailable()
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)
        if isinstance(op, AppendMessage):
            self._send(op, fut)
        elif isinstance(op, Sweep):
            self._spawn(self._sweep(op, fut))
        elif isinstance(op, PutToken | TouchToken | DeleteToken):
            self._spawn(self._token_write(op, fut))
        elif isinstance(op, MarkRead) and is_group(op.peer):
            self._spawn(self._settle(fut, self._group_read(op)))
        elif isinstance(op, CreateUser | AdvanceAck | MarkRead | AppendReceipt):
            self._route(op, fut)
        elif isinstance(op, CreateGroup):
            self._spawn(self._settle(fut, self.groups.create(op)))
        elif isinstance(op, ChangeGroup):
            self._spawn(self._settle(fut, self.groups.change(op)))
        elif isinstance(op, AppendGroupMessage):
            self._spawn(self._settle(fut, self.groups.send(op)))
        elif isinstance(op, SetProfile):
            self._spawn(self._settle(fut, self.profiles.set_profile(op)))
        elif isinstance(op, SetBlock):
            self._spawn(self._settle(fut, self.profiles.set_block(op)))
        elif isinstance(op, SetLastSeen):
            self._spawn(self._settle(fut, self.profiles.set_last_seen(op)))
        return fut

    async def _settle(self, fut: asyncio.Future[Any], work: Any) -> None:
        try:
            result = await work
        except _UNREACHABLE as exc:
            if not fut.done():
                fut.set_exception(store_unavailable())
            del exc
            return
        except Exception as exc:
            if not fut.done():
                fut.set_exception(exc)
            return
        if not fut.done():
            fut.set_result(result)

    async def _group_read(self, op: MarkRead) -> tuple[tuple[str, int], ...]:
        """The marker moves like a 1:1 one (the group's rows carry the running incoming
        count); the answer names the authors newly read, for groups that get receipts."""
        server = self.server_of(op.user)
        before = await self._fetchrow(
            server,
            "SELECT read_seq FROM conversations WHERE shard = $1 AND owner = $2 AND peer = $3",
            shard_of(op.user),
            op.user,
            op.peer,
        )
        assert self._loop is not None
        done: asyncio.Future[Any] = self._loop.create_future()
        self._route(op, done)
        await done
        if await self._group_size(op.peer) > RECEIPTS_MAX_MEMBERS:
            return ()
        floor = before[0] if before is not None and before[0] < op.seq else max(op.seq - 50, 0)
        rows = await self._fetch(
            server,
            "SELECT author, max(counterpart) FROM timeline WHERE shard = $1 AND owner = $2"
            " AND peer = $3 AND kind = $4 AND seq > $5 AND seq <= $6 AND counterpart IS NOT NULL"
            " GROUP BY author",
            shard_of(op.user),
            op.user,
            op.peer,
            KIND_GROUP_IN,
            floor,
            op.seq,
        )
        return tuple((r[0], r[1]) for r in rows)

    async def get_group(self, gid: str) -> GroupState | None:
        return await self.groups.get_group(gid)

    def set_fanout_sink(self, sink: FanoutSink) -> None:
        self.groups.sink = sink

    async def user_groups(self, user: str, limit: int) -> list[GroupState]:
        return await self.groups.user_groups(user, limit)

    async def _token_write(
        self, op: PutToken | TouchToken | DeleteToken, fut: asyncio.Future[Any]
    ) -> None:
        """The two halves of a token operation, the second once the first is durable."""
        assert self._loop is not None
        try:
            for half in halves(op):
                done: asyncio.Future[Any] = self._loop.create_future()
                self._route(half, done)
                await done
        except Exception as exc:
            if not fut.done():
                fut.set_exception(exc)
            return
        if not fut.done():
            fut.set_result(None)

    async def _list_old_tokens(self) -> None:
        """Tokens written before sessions were listed (no last use) join their users'
        sessions, as used now, through the write path (so fences hold for them too). Once
        every such row is done this is one empty index read per server; a failure leaves
        the rest for the next start (or their first use)."""
        now = int(time.time() * 1000)
        for server in range(len(self._pools)):
            shards = self.shard_map.shards_on(server)
            for _ in range(1000):
                try:
                    rows = await self._fetch(
                        server,
                        "SELECT token_hash, username, device, created FROM tokens"
                        " WHERE last_used IS NULL AND shard = ANY($1::int2[]) LIMIT 1000",
                        list(shards),
                    )
                    if not rows:
                        break
                    await asyncio.gather(
                        *(self.submit(TouchToken(r[0], r[1], r[2], now, r[3])) for r in rows)
                    )
                except Exception as exc:
                    log.warning("listing tokens of server %d among sessions: %r", server, exc)
                    break
                log.info("listed %d tokens of server %d among sessions", len(rows), server)

    def _send(self, op: AppendMessage, fut: asyncio.Future[Any]) -> None:
        recipient, sender = self.server_of(op.recipient), self.server_of(op.sender)
        chain = self._chains.get(op.sender)
        if recipient == sender and chain is None:
            self._route(Pair(op), fut)
            return
        if chain is None:
            chain = self._chains[op.sender] = deque()
        link = _Link(op, fut, pair=recipient == sender, ready=recipient == sender)
        chain.append(link)
        if not link.pair:
            half = self.submit_recipient_side(op)
            half.add_done_callback(partial(self._recipient_done, link))
        self._pump(op.sender)

    def submit_recipient_side(self, op: AppendMessage) -> asyncio.Future[Incoming]:
        """The first half of a send across servers alone; a crash right after it is what
        tests simulate with this."""
        assert self._loop is not None
        half: asyncio.Future[Incoming] = self._loop.create_future()
        self._route(RecipientSide(op), half)
        return half

    def _recipient_done(self, link: _Link, half: asyncio.Future[Incoming]) -> None:
        if half.cancelled():
            link.error = store_unavailable()
        elif half.exception() is not None:
            link.error = half.exception()
        else:
            link.incoming = half.result()
        link.ready = True
        self._pump(link.op.sender)

    def _pump(self, sender: str) -> None:
        """Hand the sender's halves to its server in submission order."""
        chain = self._chains.get(sender)
        while chain and chain[0].ready:
            link = chain[0]
            if self._moved(link):
                # A shard moved since these were submitted: every such send of the chain is
                # two halves now, their recipient halves submitted in the chain's order.
                for later in chain:
                    if self._moved(later):
                        self._split(later)
                break
            chain.popleft()
            if link.error is not None:
                if not link.fut.done():
                    link.fut.set_exception(link.error)
            elif link.pair:
                self._route(Pair(link.op), link.fut)
            else:
                assert link.incoming is not None
                self._route(SenderSide(link.op, link.incoming), link.fut)
        if chain is not None and not chain:
            del self._chains[sender]

    def _moved(self, link: _Link) -> bool:
        """A same-server send whose two users no longer share a server."""
        sender, recipient = link.op.sender, link.op.recipient
        return (
            link.pair and link.error is None and self.server_of(recipient) != self.server_of(sender)
        )

    def _split(self, link: _Link) -> None:
        link.pair = link.ready = False
        half = self.submit_recipient_side(link.op)
        half.add_done_callback(partial(self._recipient_done, link))

    async def _sweep(self, op: Sweep, fut: asyncio.Future[Any]) -> None:
        """A page of users in name order across all servers, swept on their own servers."""
        try:
            pages = await asyncio.gather(
                *(
                    self._fetch(
                        i,
                        "SELECT username FROM users WHERE username > $1 ORDER BY username LIMIT $2",
                        op.start_user,
                        op.max_users,
                    )
                    for i in range(len(self._pools))
                )
            )
            users = sorted(r[0] for rows in pages for r in rows)[: op.max_users]
            by_server: dict[int, list[str]] = defaultdict(list)
            for user in users:
                by_server[self.server_of(user)].append(user)
            assert self._loop is not None
            parts: list[asyncio.Future[Any]] = []
            for server, names in sorted(by_server.items()):
                part: asyncio.Future[Any] = self._loop.create_future()
                self._writers[server].put(SweepUsers(tuple(names), op.cutoff_ts), part)
                parts.append(part)
            dropped = sum(await asyncio.gather(*parts))
        except Exception as exc:
            if not fut.done():
                fut.set_exception(exc)
            return
        if not fut.done():
            fut.set_result((dropped, users[-1] if users else ""))

    def resolve_later(self, fut: asyncio.Future[Any], what: Resolve) -> None:
        """Answer `fut` with a counterpart seq that lives on another server."""

        async def lookup() -> None:
            try:
                found = await self._counterparts(what.peer, [what.client_id])
            except Exception as exc:
                if not fut.done():
                    fut.set_exception(exc)
                return
            if not fut.done():
                fut.set_result(found.get(what.client_id, 0))

        self._spawn(lookup())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- reads --------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _conn(self, server: int) -> AsyncIterator[Conn]:
        if not self._pools:
            raise store_unavailable()
        try:
            async with self._pools[server].acquire() as conn:
                yield conn
        except _UNREACHABLE as exc:
            raise store_unavailable() from exc

    async def _fetch(self, server: int, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self._conn(server) as conn:
            rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
            return rows

    async def _fetchrow(self, server: int, sql: str, *args: Any) -> asyncpg.Record | None:
        async with self._conn(server) as conn:
            row: asyncpg.Record | None = await conn.fetchrow(sql, *args)
            return row

    async def get_user(self, username: str) -> UserRecord | None:
        row = await self._fetchrow(
            self.server_of(username),
            "SELECT password_hash, created, display_name, last_seen FROM users WHERE username = $1",
            username,
        )
        return None if row is None else UserRecord(username, row[0], row[1], row[2], row[3])

    async def search_users(self, term: str, limit: int) -> list[UserRecord]:
        return await self.profiles.search(term, limit)

    async def blocks(self, owner: str, limit: int) -> list[str]:
        return await self.profiles.blocks(owner, limit)

    async def blocked(self, owner: str, other: str) -> bool:
        return await self.profiles.blocked(owner, other)

    async def blockers_among(self, user: str, owners: list[str]) -> set[str]:
        return await self.profiles.blockers_among(user, owners)

    async def contacts_among(self, user: str, candidates: list[str]) -> set[str]:
        return await self.profiles.contacts_among(user, candidates)

    async def get_token(self, token_hash: bytes) -> TokenRecord | None:
        row = await self._fetchrow(
            self.server_of(token_hash),
            "SELECT username, device, created, last_used, user_agent FROM tokens"
            " WHERE token_hash = $1",
            token_hash,
        )
        return None if row is None else TokenRecord(row[0], row[1], row[2], row[3] or 0, row[4])

    async def sessions(self, user: str, limit: int) -> list[SessionRecord]:
        rows = await self._fetch(
            self.server_of(user),
            "SELECT id, token_hash, created, last_used, user_agent FROM sessions"
            " WHERE shard = $1 AND owner = $2 ORDER BY last_used DESC, id DESC LIMIT $3",
            shard_of(user),
            user,
            limit,
        )
        return [SessionRecord(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def get_session(self, user: str, session_id: str) -> SessionRecord | None:
        row = await self._fetchrow(
            self.server_of(user),
            "SELECT token_hash, created, last_used, user_agent FROM sessions"
            " WHERE shard = $1 AND owner = $2 AND id = $3",
            shard_of(user),
            user,
            session_id,
        )
        return None if row is None else SessionRecord(session_id, row[0], row[1], row[2], row[3])

    async def head(self, user: str) -> int:
        row = await self._fetchrow(
            self.server_of(user),
            "SELECT seq FROM heads WHERE shard = $1 AND owner = $2",
            shard_of(user),
            user,
        )
        return 0 if row is None else int(row[0])

    async def ack_watermark(self, user: str) -> int:
        row = await self._fetchrow(
            self.server_of(user),
            "SELECT acked FROM heads WHERE shard = $1 AND owner = $2",
            shard_of(user),
            user,
        )
        return 0 if row is None else int(row[0])

    async def events_after(self, user: str, after: int, limit: int) -> list[tuple[int, bytes]]:
        rows = await self._fetch(
            self.server_of(user),
            f"SELECT t.seq, {EVENT_SQL} FROM timeline t{BODY_JOIN}"
            " WHERE t.shard = $1 AND t.owner = $2 AND t.seq > $3"
            f" AND {HAS_EVENT} ORDER BY t.seq LIMIT $4",
            shard_of(user),
            user,
            after,
            limit,
        )
        return [(r[0], r[1]) for r in rows]

    async def incoming_summary(
        self, user: str, after: int, up_to: int
    ) -> dict[tuple[str, str], int]:
        # One read for 1:1 peers and group authors alike (an ack is frequent: every member of
        # a busy group acks many times a second).
        rows = await self._fetch(
            self.server_of(user),
            "SELECT kind, peer, author, max(counterpart),"
            " array_agg(client_id) FILTER (WHERE counterpart IS NULL AND kind = $5)"
            " FROM timeline WHERE shard = $1 AND owner = $2 AND seq > $3 AND seq <= $4"
            " AND kind IN ($5, $6) GROUP BY kind, peer, author",
            shard_of(user),
            user,
            after,
            up_to,
            KIND_IN,
            KIND_GROUP_IN,
        )
        direct = [r for r in rows if r[0] == KIND_IN]
        out: dict[str, int] = {r[1]: r[3] for r in direct if r[3] is not None}
        # Incoming copies written on another server than their outgoing copies: ask the
        # senders' servers (a sender half not written yet simply counts for nothing).
        unknown = [(r[1], r[4]) for r in direct if r[4] is not None]
        found = await asyncio.gather(*(self._counterparts(peer, cids) for peer, cids in unknown))
        for (peer, _), seqs in zip(unknown, found, strict=True):
            seq = max(seqs.values(), default=0)
            if seq > out.get(peer, 0):
                out[peer] = seq
        summary = {(peer, ""): seq for peer, seq in out.items()}
        for kind, gid, author, seq, _ in rows:
            if kind != KIND_GROUP_IN or seq is None:
                continue
            if await self._group_size(gid) <= RECEIPTS_MAX_MEMBERS:
                summary[(author, gid)] = seq
        return summary

    async def _group_size(self, gid: str) -> int:
        """A group's member count, remembered for a few seconds: every member's ack asks,
        and a large group's answer (no receipts) does not need to be fresher than that."""
        now = time.monotonic()
        known = self._sizes.get(gid)
        if known is not None and now - known[1] < GROUP_SIZE_TTL:
            return known[0]
        state = await self.groups.get_group(gid)
        size = RECEIPTS_MAX_MEMBERS + 1 if state is None else len(state.members)
        if len(self._sizes) > 10_000:
            self._sizes.clear()
        self._sizes[gid] = (size, now)
        return size

    async def _counterparts(self, sender: str, client_ids: Iterable[str]) -> dict[str, int]:
        """Seqs of `sender`'s outgoing copies by client_id, read on the sender's server."""
        rows = await self._fetch(
            self.server_of(sender),
            "SELECT client_id, seq FROM dedupe"
            " WHERE shard = $1 AND owner = $2 AND sender = $2 AND client_id = ANY($3::text[])",
            shard_of(sender),
            sender,
            list(client_ids),
        )
        return {r[0]: r[1] for r in rows}

    async def conversations(self, user: str, limit: int) -> list[Conversation]:
        rows = await self._fetch(
            self.server_of(user),
            f"SELECT c.peer, c.last_seq, {EVENT_SQL}, greatest(c.in_total - c.read_ordinal, 0)"
            " FROM (SELECT * FROM conversations WHERE shard = $1 AND owner = $2"
            "  ORDER BY last_seq DESC LIMIT $3) AS c"
            " JOIN timeline t ON t.shard = c.shard AND t.owner = c.owner AND t.seq = c.last_seq"
            f"{BODY_JOIN} WHERE {HAS_EVENT}"
            " ORDER BY c.last_seq DESC",
            shard_of(user),
            user,
            limit,
        )
        return [Conversation(r[0], r[1], r[2], r[3]) for r in rows]

    async def history(
        self, user: str, peer: str, before: int | None, limit: int
    ) -> list[tuple[int, bytes]]:
        rows = await self._fetch(
            self.server_of(user),
            f"SELECT t.seq, {EVENT_SQL} FROM timeline t{BODY_JOIN}"
            " WHERE t.shard = $1 AND t.owner = $2 AND t.peer = $3 AND t.kind <> 3 AND t.seq < $4"
            f" AND {HAS_EVENT} ORDER BY t.seq DESC LIMIT $5",
            shard_of(user),
            user,
            peer,
            _NO_SEQ if before is None else before,
            limit,
        )
        return [(r[0], r[1]) for r in rows]

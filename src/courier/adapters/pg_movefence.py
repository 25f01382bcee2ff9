"""A node's side of an online shard move: the fence check, held writes, the map follower.

A shard moving from server A to server B is frozen on A (`shard_fence`) once its rows are
copied. Every writer batch reads the frozen shards of its server under a shared lock
(`courier_frozen_shards()`), and the operations that write a frozen shard are not applied:
they come back here ("bounced") and wait, with every later write of that shard made by this
node and every later half of the same senders, until the map says where the shard lives now.
Then they go out again in their original order (a sender's halves back at the front of its
chain), so a sender's messages keep their order across the move, and a caller's future
resolves only once its write is durable on the new server.

The map is reread when the directory notifies `courier_shard_map`, every `refresh` seconds in
case a notification was missed, and whenever a write bounces; a node that missed everything
still cannot write to the old server, since the fence stays frozen there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg

from courier.adapters.pg_batch import (
    Pair,
    RecipientSide,
    SenderSide,
    ServerOp,
    SweepUsers,
)
from courier.adapters.pg_schema import Conn
from courier.adapters.pg_sessions import SessionRow, TokenRow
from courier.adapters.pg_shardmap import ShardMap, read_shard_map
from courier.domain.ops import (
    AdvanceAck,
    AppendReceipt,
    CreateUser,
    MarkRead,
)
from courier.domain.shards import LOGICAL_SHARDS, shard_of

if TYPE_CHECKING:
    from courier.adapters.pg_store import PgStore

log = logging.getLogger(__name__)

MAP_CHANNEL = "courier_shard_map"
# How long a held write waits for the map to change before it is tried again (the shard may
# have been unfrozen by a move that gave up).
_HOLD_PATIENCE = 2.0


class Bounced:
    """The result of an operation not applied because it writes `shard`, frozen here."""

    __slots__ = ("shard",)

    def __init__(self, shard: int) -> None:
        self.shard = shard


def op_shards(op: ServerOp) -> tuple[int, ...]:
    """The shards an operation writes; the first one places it."""
    if isinstance(op, Pair):
        return (shard_of(op.op.sender), shard_of(op.op.recipient))
    if isinstance(op, RecipientSide):
        return (shard_of(op.op.recipient),)
    if isinstance(op, SenderSide):
        return (shard_of(op.op.sender),)
    if isinstance(op, CreateUser):
        return (shard_of(op.username),)
    if isinstance(op, TokenRow):
        return (shard_of(op.op.token_hash),)
    if isinstance(op, SessionRow):
        return (shard_of(op.op.username),)
    if isinstance(op, AdvanceAck | MarkRead):
        return (shard_of(op.user),)
    assert isinstance(op, AppendReceipt)
    return (shard_of(op.owner),)


async def frozen_shards(conn: Conn) -> frozenset[int]:
    """Take the shared fence lock for this transaction and read the frozen shards."""
    found = await conn.fetchval("SELECT courier_frozen_shards()")
    return frozenset(found) if found else frozenset()


def fence_ops(
    ops: list[ServerOp], frozen: frozenset[int], senders: Mapping[str, int]
) -> tuple[list[ServerOp], list[Any]]:
    """The operations to apply, and per operation either None (applied) or a `Bounced`.

    An operation bounces when it writes a frozen shard, and a sender's half when an earlier
    half of that sender bounced (`senders`: sender -> shard held), so that no later message
    of a sender takes a seq in its timeline before an earlier one."""
    keep: list[ServerOp] = []
    marks: list[Any] = []
    blocked = dict(senders)
    for op in ops:
        hit = next((s for s in op_shards(op) if s in frozen), None)
        sender = op.op.sender if isinstance(op, Pair | SenderSide) else None
        if hit is None and sender is not None:
            hit = blocked.get(sender)
        if hit is None:
            keep.append(op)
            marks.append(None)
            continue
        marks.append(Bounced(hit))
        if sender is not None:
            blocked.setdefault(sender, hit)
    return keep, marks


def merge_fenced(marks: list[Any], results: list[Any]) -> list[Any]:
    applied = iter(results)
    return [next(applied) if mark is None else mark for mark in marks]


def fence_sweep(op: SweepUsers, frozen: frozenset[int]) -> SweepUsers:
    """Retention skips the users of frozen shards: their rows are the new server's now."""
    if not frozen:
        return op
    return SweepUsers(tuple(u for u in op.users if shard_of(u) not in frozen), op.cutoff_ts)


@dataclass(eq=False)
class Hold:
    """The writes of one shard held back by this node while the shard moves away from
    `source`: those bounced by the fence (in the order the writer met them), then those
    submitted meanwhile."""

    source: int
    bounced: list[tuple[ServerOp, asyncio.Future[Any]]] = field(default_factory=list)
    later: list[tuple[ServerOp, asyncio.Future[Any]]] = field(default_factory=list)


class MapFollower:
    """Keeps `store`'s shard map current and releases held writes once their shard moved."""

    def __init__(self, store: PgStore, directory_dsn: str, *, refresh: float = 5.0) -> None:
        self.store = store
        self.dsn = directory_dsn
        self.refresh = refresh
        self.holds: dict[int, Hold] = {}
        self.senders: dict[str, int] = {}  # a sender whose halves wait in a hold -> its shard
        self._changed = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="courier-pg-map-follower")

    async def stop(self) -> None:
        for task in list(self._releases):  # only left when their writes were given up on
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # ---- holding writes -------------------------------------------------------------------
    def held(self, op: ServerOp, fut: asyncio.Future[Any]) -> bool:
        """Keep `op` back when a shard it writes is moving, or when it is a half of a sender
        whose earlier half is held; True when it was kept."""
        sender = op.op.sender if isinstance(op, Pair | SenderSide) else None
        shard = None if sender is None else self.senders.get(sender)
        if shard is None:
            shard = next((s for s in op_shards(op) if s in self.holds), None)
            if shard is None:
                return False
        self.holds[shard].later.append((op, fut))
        if sender is not None:
            self.senders.setdefault(sender, shard)
        return True

    def bounce(self, server: int, shard: int, op: ServerOp, fut: asyncio.Future[Any]) -> None:
        """`op` met the frozen fence of `shard` on `server` (or followed a sender's half
        that did)."""
        self._hold(shard, server).bounced.append((op, fut))
        if isinstance(op, Pair | SenderSide):
            self.senders.setdefault(op.op.sender, shard)
        self._changed.set()

    def _hold(self, shard: int, source: int) -> Hold:
        hold = self.holds.get(shard)
        if hold is None:
            hold = self.holds[shard] = Hold(source)
            task = asyncio.create_task(self._release(shard, hold))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)
        return hold

    async def _release(self, shard: int, hold: Hold) -> None:
        """Once every write put on the old server before the hold has come back or landed,
        and the map names another server (or patience ran out), send the held writes again
        in order."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _HOLD_PATIENCE
        while True:
            await self.store.barrier(hold.source)
            if self.store.shard_map.server_of_shard(shard) != hold.source:
                break
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.02)
            with contextlib.suppress(Exception):
                await self.reload()
        del self.holds[shard]
        for sender in [s for s, held in self.senders.items() if held == shard]:
            del self.senders[sender]
        self.store.redispatch(hold.bounced + hold.later)

    # ---- following the map ----------------------------------------------------------------
    async def reload(self) -> None:
        """Read the directory's map; hold each shard that moved until its old server's queue
        has no more writes of it, so no write overtakes an earlier one."""
        async with self._reload_lock:
            pool = self.store.directory_pool()
            async with pool.acquire() as conn:
                new = await read_shard_map(conn, len(self.store.servers))
            self.install(new)

    def install(self, new: ShardMap) -> None:
        old = self.store.shard_map
        if new.version < old.version:
            return
        for shard in range(LOGICAL_SHARDS):
            before = old.server_of_shard(shard)
            if before != new.server_of_shard(shard):
                self._hold(shard, before)
        self.store.set_shard_map(new)

    async def _follow(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=5)
                await conn.add_listener(MAP_CHANNEL, self._notified)
                await self.reload()  # whatever changed while nobody listened
                while not conn.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), self.refresh)
                    self._changed.clear()
                    await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("shard map follower: %r; retrying", exc)
                await asyncio.sleep(1.0)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 5)

    def _notified(self, *_: object) -> None:
        self._changed.set()

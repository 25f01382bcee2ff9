"""The embedded default store: RocksDB through rocksdict, one writer thread, group commit.

Writes: `submit` puts an operation on a queue and returns a future. The writer thread takes
everything queued (up to `batch_max`), applies it to one WriteBatch and commits it with
sync=True: one fsync per batch, never one per message. A lone operation waits for nothing;
under load batches grow by themselves. Futures are resolved on the event loop with one
thread-safe call per batch.

Reads run on the event loop: they are point gets and short range scans on an LSM tree with a
block cache, microseconds each, cheaper than a hop to a thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from typing import Any, cast

import msgspec
from rocksdict import (
    BlockBasedIndexType,
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    Options,
    Rdict,
    WriteOptions,
)

from courier.adapters import rocks_keys as K
from courier.adapters import rocks_timeline as T
from courier.adapters.rocks_batch import Batch
from courier.adapters.rocks_groups import GroupCache
from courier.adapters.rocks_lines import Lines
from courier.adapters.rocks_wal import WalSync
from courier.domain.errors import CourierError, store_unavailable
from courier.domain.groups import GroupState, is_group
from courier.domain.ops import (
    Conversation,
    SessionRecord,
    TokenRecord,
    TouchToken,
    UserRecord,
    WriteOp,
)
from courier.metrics import Metrics
from courier.ports import FanoutSink

log = logging.getLogger(__name__)

_Item = tuple[WriteOp, "asyncio.Future[Any]"]
MAX_OPEN_FILES = 512
SESSIONS_SCAN_MAX = 1000  # session keys read per listing, whatever a user holds
SEARCH_SCAN_MAX = 200  # index keys a people search reads (a user has a few terms)
RECEIPT_SCAN_MAX = 5000  # group log entries an ack looks at for delivered receipts


def _options(cache_mb: int) -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_compression_type(DBCompressionType.lz4())
    opts.set_write_buffer_size(64 * 1024 * 1024)
    opts.set_max_background_jobs(2)
    # Table files held open at most (a 10M-message store has a few dozen): the rest of the
    # process's descriptors are for sockets, and admission keeps these in reserve.
    opts.set_max_open_files(MAX_OPEN_FILES)
    table = BlockBasedOptions()
    table.set_block_cache(Cache(cache_mb * 1024 * 1024))
    table.set_bloom_filter(10, False)
    # Partitioned index and filters: a table's index and filter are split into small blocks
    # that live in the block cache like data blocks, with only their top level pinned. A
    # whole-file index of a large store can outgrow a cache shard and then be reread on
    # every get (~1 ms each on a 10M-message store, against ~3 us partitioned).
    table.set_index_type(BlockBasedIndexType.two_level_index_search())
    table.set_partition_filters(True)
    table.set_metadata_block_size(4096)
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_top_level_index_and_filter(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    opts.set_block_based_table_factory(table)
    return opts


class RocksStore:
    def __init__(
        self,
        path: str,
        *,
        metrics: Metrics | None = None,
        batch_max: int = 1000,
        cache_mb: int = 128,
        sync: bool = True,
    ) -> None:
        self._path = path
        self._metrics = metrics
        self._batch_max = batch_max
        self._cache_mb = cache_mb
        self._sync = sync
        self._db: Rdict | None = None
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._known_users: set[str] = set()
        self._groups = GroupCache()  # the writer's, like _known_users
        self._lines = Lines()  # the writer's: heads and open runs (rocks_lines)
        self._failed = False
        self._wal_broken = False

    # ---- lifecycle ----------------------------------------------------------------------
    async def open(self) -> None:
        os.makedirs(self._path, exist_ok=True)
        opts = _options(self._cache_mb)
        # Naming the default column family's options is what makes them apply on a reopen:
        # otherwise an existing store keeps RocksDB's defaults (an 8 MiB block cache, no
        # bloom filter) and every read gets slower with the store's size.
        self._db = Rdict(self._path, opts, column_families={"default": opts})
        self._loop = asyncio.get_running_loop()
        self._wal_broken = False
        await asyncio.to_thread(self._upgrade)
        self._thread = threading.Thread(target=self._run, name="courier-store-writer", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def healthy(self) -> bool:
        return self._db is not None and not self._failed and self._thread is not None

    @property
    def db(self) -> Rdict:
        if self._db is None:
            raise store_unavailable()
        return self._db

    def _upgrade(self) -> None:
        """Bring a store written by an older layout to the current one (FORMAT_KEY). Runs
        before the writer starts, so it is the only mutator; each step is one WriteBatch."""
        db = self.db
        raw = db.get(K.FORMAT_KEY)
        found = K.unpack_u64(raw) if raw is not None else 0
        if found > K.FORMAT_PROFILES:
            raise RuntimeError(
                f"this data dir has store format {found}, newer than this Courier reads"
                f" ({K.FORMAT_PROFILES}); run the release that wrote it"
            )
        if found < K.FORMAT_SESSIONS:
            self._index_sessions()
        if found < K.FORMAT_PROFILES:
            self._index_profiles()

    def _write_now(self, batch: Batch) -> None:
        opts = WriteOptions()
        opts.sync = self._sync
        self.db.write(batch.wb, opts)

    def _index_sessions(self) -> None:
        """A store written before sessions were listed: every token joins its user's
        sessions, as last used now (its real last use was never recorded)."""
        db = self.db
        now = int(time.time() * 1000)
        batch = Batch(db, set())
        it = db.iter()
        it.seek(K.TOKEN_PREFIX)
        found = 0
        while it.valid() and it.key().startswith(K.TOKEN_PREFIX):
            record = msgspec.msgpack.decode(it.value(), type=TokenRecord)
            if not record.last_used:
                op = TouchToken(it.key()[1:], record.username, record.device, now, record.created)
                batch.touch_token(op)
                found += 1
            it.next()
        batch.put(K.FORMAT_KEY, K.pack_u64(K.FORMAT_SESSIONS))
        self._write_now(batch)
        if found:
            log.info("indexed %d tokens by user (sessions listing)", found)

    def _index_profiles(self) -> None:
        """A store written before people could be searched: every user gets their terms."""
        db = self.db
        batch = Batch(db, set())
        it = db.iter()
        it.seek(K.USER_PREFIX)
        found = 0
        while it.valid() and it.key().startswith(K.USER_PREFIX):
            batch.index_user(msgspec.msgpack.decode(it.value(), type=UserRecord))
            found += 1
            if found % 10_000 == 0:  # bounded batches on a large store
                self._write_now(batch)
                batch = Batch(db, set())
            it.next()
        batch.put(K.FORMAT_KEY, K.pack_u64(K.FORMAT_PROFILES))
        self._write_now(batch)
        if found:
            log.info("indexed %d users for people search", found)

    # ---- writes -------------------------------------------------------------------------
    def submit(self, op: WriteOp) -> asyncio.Future[Any]:
        loop = self._loop
        if loop is None or self._thread is None:
            raise store_unavailable()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.put((op, fut))
        return fut

    def _run(self) -> None:
        write_opts = WriteOptions()
        write_opts.sync = False  # made durable by WalSync, without holding the GIL
        wal = WalSync(self._path) if self._sync else None
        try:
            self._drain(write_opts, wal)
        finally:
            if wal is not None:
                wal.close()

    def _drain(self, write_opts: WriteOptions, wal: WalSync | None) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            items: list[_Item] = [first]
            while len(items) < self._batch_max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                items.append(item)
            self._commit(items, write_opts, wal)

    def _commit(self, items: list[_Item], write_opts: WriteOptions, wal: WalSync | None) -> None:
        if self._wal_broken:
            assert self._loop is not None
            refused = [store_unavailable() for _ in items]
            self._loop.call_soon_threadsafe(_resolve, [fut for _op, fut in items], refused)
            return
        started = time.perf_counter()
        self._lines.trim()
        batch = Batch(self.db, self._known_users, self._groups, self._lines)
        results: list[Any] = []
        try:
            batch.prefetch([op for op, _fut in items])
            for op, _fut in items:
                try:
                    results.append(batch.apply(op))
                except CourierError as exc:
                    results.append(exc)
            batch.finish()
            wrote = len(batch.wb) > 0  # a batch of retries alone writes nothing to flush
            self.db.write(batch.wb, write_opts)
        except Exception:
            self._lines.clear()  # the batch changed them and was not written
            if len(items) > 1:
                # Isolate the operation that failed: each one again in a batch of its own.
                log.exception(
                    "store batch failed; retrying its %d operations one by one", len(items)
                )
                for item in items:
                    self._commit([item], write_opts, wal)
                return
            log.exception("store operation failed: %r", items[0][0])
            self._failed = not self._probe()
            results = [store_unavailable()]
        else:
            try:
                if wal is not None and wrote:
                    wal.sync()
            except OSError:
                # Written but maybe not durable: never written again (that would double it),
                # and no later flush is trusted either (a failed fdatasync may have dropped
                # pages that a later one would not report): the store stops taking writes
                # until it is reopened, as RocksDB does after a failed sync.
                log.exception("flushing the write-ahead log failed; refusing writes")
                self._failed = self._wal_broken = True
                self._lines.clear()
                results = [store_unavailable() for _ in items]
            else:
                self._failed = False
                self._known_users.update(batch.new_users)
                self._groups.update(batch.groups_changed)
        if self._metrics is not None:
            self._metrics.store_batch_size.observe(len(items))
            self._metrics.store_commit_seconds.observe(time.perf_counter() - started)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_resolve, [fut for _op, fut in items], results)

    def _probe(self) -> bool:
        try:
            self.db.get(b"\x00probe")
            return True
        except Exception:
            return False

    # ---- reads --------------------------------------------------------------------------
    def _multi_get(self, keys: list[bytes]) -> list[bytes | None]:
        values = self.db.get(list[Any](keys))
        return cast("list[bytes | None]", values)

    async def get_user(self, username: str) -> UserRecord | None:
        raw = self.db.get(K.user_key(username))
        return None if raw is None else msgspec.msgpack.decode(raw, type=UserRecord)

    async def search_users(self, term: str, limit: int) -> list[UserRecord]:
        """Users with a search term starting with `term` (folded), in term order, each once;
        the seek reads at most SEARCH_SCAN_MAX index keys whatever matches."""
        prefix = K.term_prefix(term)
        it = self.db.iter()
        it.seek(prefix)
        names: dict[str, None] = {}
        scanned = 0
        while len(names) < limit and scanned < SEARCH_SCAN_MAX and it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            names[K.user_of_term_key(key)] = None
            scanned += 1
            it.next()
        if not names:
            return []
        raws = self._multi_get([K.user_key(u) for u in names])
        return [msgspec.msgpack.decode(r, type=UserRecord) for r in raws if r is not None]

    async def blocks(self, owner: str, limit: int) -> list[str]:
        prefix = K.block_prefix(owner)
        it = self.db.iter()
        it.seek(prefix)
        out: list[str] = []
        while len(out) < limit and it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            out.append(key[len(prefix) :].decode())
            it.next()
        return out

    async def blocked(self, owner: str, other: str) -> bool:
        return self.db.get(K.block_key(owner, other)) is not None

    async def blockers_among(self, user: str, owners: list[str]) -> set[str]:
        if not owners:
            return set()
        found = self._multi_get([K.block_key(o, user) for o in owners])
        return {o for o, raw in zip(owners, found, strict=True) if raw is not None}

    async def contacts_among(self, user: str, candidates: list[str]) -> set[str]:
        if not candidates:
            return set()
        found = self._multi_get([K.meta_key(user, c) for c in candidates])
        return {c for c, raw in zip(candidates, found, strict=True) if raw is not None}

    async def get_token(self, token_hash: bytes) -> TokenRecord | None:
        raw = self.db.get(K.token_key(token_hash))
        return None if raw is None else msgspec.msgpack.decode(raw, type=TokenRecord)

    async def sessions(self, user: str, limit: int) -> list[SessionRecord]:
        """The user's session keys (few: the service caps them per user; the scan is
        bounded all the same), their records in one multi-get, sorted by last use."""
        prefix = K.session_prefix(user)
        it = self.db.iter()
        it.seek(prefix)
        found: list[tuple[str, bytes]] = []
        while len(found) < SESSIONS_SCAN_MAX and it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            found.append((key[len(prefix) :].decode(), it.value()))
            it.next()
        if not found:
            return []
        records = self._multi_get([K.token_key(token_hash) for _, token_hash in found])
        out = [
            _session(session_id, token_hash, raw)
            for (session_id, token_hash), raw in zip(found, records, strict=True)
            if raw is not None
        ]
        out.sort(key=lambda s: (s.last_used, s.id), reverse=True)
        return out[:limit]

    async def get_session(self, user: str, session_id: str) -> SessionRecord | None:
        token_hash = self.db.get(K.session_key(user, session_id))
        if token_hash is None:
            return None
        raw = self.db.get(K.token_key(token_hash))
        return None if raw is None else _session(session_id, token_hash, raw)

    async def head(self, user: str) -> int:
        return T.read_head(self.db, user).seq

    async def ack_watermark(self, user: str) -> int:
        raw = self.db.get(K.ack_max_key(user))
        return K.unpack_u64(raw) if raw else 0

    async def events_after(self, user: str, after: int, limit: int) -> list[tuple[int, bytes]]:
        return T.events_after(self.db, user, after, limit)

    async def incoming_summary(
        self, user: str, after: int, up_to: int
    ) -> dict[tuple[str, str], int]:
        prefix = K.timeline_prefix(user)
        it = self.db.iter()
        # A run that starts at or before `after` may reach into the range (a later entry
        # closed it): its entry is the one before the range.
        it.seek_for_prev(prefix + K.pack_u64(after + 1))
        runs = (
            it.valid()
            and it.key().startswith(prefix)
            and K.parse_timeline_value(it.value())[0] == K.KIND_GROUP_RUN
        )
        it.seek(prefix + K.pack_u64(after + 1))
        out: dict[tuple[str, str], int] = {}
        while it.valid():
            key = it.key()
            if not key.startswith(prefix) or K.seq_of(key) > up_to:
                break
            kind, counterpart, peer, _event = K.parse_timeline_value(it.value())
            if kind == K.KIND_IN and counterpart > out.get((peer, ""), 0):
                out[(peer, "")] = counterpart
            runs = runs or kind == K.KIND_GROUP_RUN
            it.next()
        head = T.read_head(self.db, user)
        if runs or head.gid:  # group messages: their authors, newest first, bounded
            budget = RECEIPT_SCAN_MAX
            for gid, first, last in reversed(T.run_ranges(self.db, user, after + 1, up_to, head)):
                for flags, author_seq, author in T.log_authors(self.db, gid, first, last, budget):
                    budget -= 1
                    if not flags & K.LOG_RECEIPTS:
                        break  # a group too large for receipts (newest first: older too)
                    better = author_seq > out.get((author, gid), 0)
                    if flags & K.LOG_RECEIPTS and author != user and better:
                        out[(author, gid)] = author_seq
                if budget <= 0:
                    break
        return out

    def set_fanout_sink(self, sink: FanoutSink) -> None:
        """Nothing to hand over: a group message is in one WriteBatch, all members or none."""

    async def get_group(self, gid: str) -> GroupState | None:
        raw = self.db.get(K.group_key(gid))
        return None if raw is None else msgspec.msgpack.decode(raw, type=GroupState)

    async def user_groups(self, user: str, limit: int) -> list[GroupState]:
        prefix = K.member_of_prefix(user)
        it = self.db.iter()
        it.seek(prefix)
        gids: list[str] = []
        while len(gids) < limit and it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            gids.append(key[len(prefix) :].decode())
            it.next()
        if not gids:
            return []
        raws = self._multi_get([K.group_key(g) for g in gids])
        return [msgspec.msgpack.decode(r, type=GroupState) for r in raws if r is not None]

    async def conversations(self, user: str, limit: int) -> list[Conversation]:
        prefix = K.recent_prefix(user)
        it = self.db.iter()
        it.seek_for_prev(prefix + b"\xff" * 8)
        rows: list[tuple[str, int]] = []
        while len(rows) < limit and it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            rows.append((it.value().decode(), K.seq_of(key)))
            it.prev()
        if not rows:
            return []
        metas = self._multi_get([K.meta_key(user, peer) for peer, _ in rows])
        head: T.Head | None = None
        out: list[Conversation] = []
        for (peer, seq), meta_raw in zip(rows, metas, strict=True):
            if meta_raw is None:
                continue
            meta = K.unpack_meta(meta_raw)
            if not is_group(peer):
                last = T.entry_at(self.db, user, seq)
                unread = meta[1] - meta[3]
            else:
                head = head or T.read_head(self.db, user)
                last, unread = self._group_last(user, peer, seq, meta, head)
            if last is not None:
                out.append(Conversation(peer, seq, last, max(unread, 0)))
        return out

    def _group_last(
        self, user: str, gid: str, seq: int, meta: list[int], head: T.Head
    ) -> tuple[bytes | None, int]:
        """A group conversation's newest entry (its run's end when `seq` starts a run) and
        its unread count: the group's messages in closed runs and in the open one, less the
        user's own, less those read."""
        raw = self.db.get(K.timeline_key(user, seq))
        last_seq = seq
        if raw is not None and raw[0] == K.KIND_GROUP_RUN:
            last_seq = T.run_end(self.db, user, seq, head)
        in_open = head.seq - head.start + 1 if head.gid == gid else 0
        unread = meta[1] + in_open - meta[4] - meta[3]
        return T.entry_at(self.db, user, last_seq), unread

    async def history(
        self, user: str, peer: str, before: int | None, limit: int
    ) -> list[tuple[int, bytes]]:
        return T.history(self.db, user, peer, before, limit)


def _session(session_id: str, token_hash: bytes, raw: bytes) -> SessionRecord:
    record = msgspec.msgpack.decode(raw, type=TokenRecord)
    last_used = record.last_used or record.created
    return SessionRecord(session_id, token_hash, record.created, last_used, record.user_agent)


def _resolve(futures: list[asyncio.Future[Any]], results: list[Any]) -> None:
    for fut, result in zip(futures, results, strict=True):
        if fut.done():
            continue
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)

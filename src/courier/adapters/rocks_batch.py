"""One group commit on RocksDB: applies a list of operations to a single WriteBatch.

Runs on the store's writer thread only. The writer is the only mutator of the database, so
reads made here (heads, metas, dedupe keys) cannot race with another writer; values changed
earlier in the same batch are served from the overlay dictionaries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import msgspec
from rocksdict import Rdict, WriteBatch

from courier.adapters import rocks_keys as K
from courier.adapters.rocks_groups import GroupCache, GroupOps
from courier.adapters.rocks_lines import Line, Lines
from courier.adapters.rocks_social import SocialOps
from courier.adapters.rocks_timeline import entry_at, log_authors, read_head, run_ranges
from courier.adapters.rocks_timeline import run_end as run_end_committed
from courier.domain.errors import CourierError, bad_request, unknown_user
from courier.domain.events import (
    MessageEvent,
    ReceiptEvent,
    encode_event,
    message_tail,
    peek,
    with_seq,
)
from courier.domain.groups import GroupReceiptEvent, is_group
from courier.domain.ops import (
    AckAdvance,
    AdvanceAck,
    AppendGroupMessage,
    AppendMessage,
    AppendReceipt,
    ChangeGroup,
    CreateGroup,
    CreateUser,
    DeleteToken,
    MarkRead,
    Published,
    PutToken,
    SendResult,
    SetBlock,
    SetLastSeen,
    SetProfile,
    Sweep,
    TokenRecord,
    TouchToken,
    UserRecord,
    WriteOp,
)

_MISSING = object()
READ_SCAN_MAX = 1000  # conversation entries a group read marker looks at for receipts


class Batch(GroupOps, SocialOps):
    def __init__(
        self,
        db: Rdict,
        known_users: set[str],
        group_cache: GroupCache | None = None,
        lines: Lines | None = None,
    ) -> None:
        self.db = db
        self.group_cache = group_cache if group_cache is not None else GroupCache()
        self.groups_changed: dict[str, Any] = {}
        self._gseqs: dict[str, int] = {}
        self._gseqs_dirty: set[str] = set()
        self.wb = WriteBatch(raw_mode=True)
        self.known_users = known_users
        self.new_users: list[str] = []
        self._kv: dict[bytes, bytes | None] = {}
        self.lines = lines if lines is not None else Lines()
        self._dirty: set[str] = set()
        self._committed_heads: dict[str, int] = {}
        # (owner, peer) -> [last_seq, in_total, read_seq, read_ordinal, last_in_cp, orig_last]
        self._metas: dict[tuple[str, str], list[int]] = {}
        self._sent: dict[bytes, SendResult] = {}
        self._prefetched: dict[bytes, bytes | None] = {}
        self.published = 0

    # ---- overlay primitives -------------------------------------------------------------
    def prefetch(self, ops: list[WriteOp]) -> None:
        """Read every key the batch's sends will look at in one multi-get.

        A point get costs microseconds, but rocksdict releases the GIL for each one and the
        writer thread may then wait for the event loop's thread to hand it back: one call per
        batch instead of several per message.
        """
        keys: list[bytes] = []
        for op in ops:
            if isinstance(op, AppendMessage):
                s, r = op.sender, op.recipient
                keys += (
                    K.dedupe_key(s, s, op.client_id),
                    K.head_key(s),
                    K.head_key(r),
                    K.meta_key(s, r),
                    K.meta_key(r, s),
                    K.block_key(r, s),
                )
                if r not in self.known_users:
                    keys.append(K.user_key(r))
            elif isinstance(op, AppendGroupMessage):
                s = op.sender
                keys += (K.dedupe_key(s, s, op.client_id), K.gseq_key(op.group))
                state = self.group_cache.states.get(op.group)
                if state is None:
                    keys.append(K.group_key(op.group))
                else:  # every member's head and conversation meta
                    keys += [K.head_key(u) for u in state.usernames]
                    keys += [K.meta_key(u, op.group) for u in state.usernames]
        if keys:
            keys = list(dict.fromkeys(keys))
            values = cast("list[bytes | None]", self.db.get(list[Any](keys)))
            self._prefetched = dict(zip(keys, values, strict=True))

    def _read(self, key: bytes) -> bytes | None:
        value = self._prefetched.get(key, _MISSING)
        if value is _MISSING:
            return self.db.get(key)
        return value  # type: ignore[return-value]

    def get(self, key: bytes) -> bytes | None:
        value = self._kv.get(key, _MISSING)
        if value is _MISSING:
            return self._read(key)
        return value  # type: ignore[return-value]

    def put(self, key: bytes, value: bytes) -> None:
        self._kv[key] = value
        self.wb.put(key, value)

    def delete(self, key: bytes) -> None:
        self._kv[key] = None
        self.wb.delete(key)

    def committed_head(self, user: str) -> int:
        """The head as committed before this batch (what readers may already have seen)."""
        head = self._committed_heads.get(user)
        if head is None:
            raw = self._read(K.head_key(user))
            head = 0
            if raw:
                before, gstart, gid = K.unpack_head(raw)
                head = before
                if gid:
                    q = self._read(K.gseq_key(gid))
                    head = before + (K.unpack_u64(q) if q else gstart) - gstart + 1
            self._committed_heads[user] = head
        return head

    def line(self, user: str) -> Line:
        line = self.lines.lines.get(user)
        if line is None:
            line = self.lines.line(self.db, user, self._read(K.head_key(user)), known=True)
        return line

    def head(self, user: str) -> int:
        line = self.line(user)
        if not line.gid:
            return line.before
        return line.before + self.gseq(line.gid) - line.gstart + 1

    def next_seq(self, user: str) -> int:
        """The seq of an entry appended to `user`'s timeline now (its open run, if any,
        ends here)."""
        line = self.line(user)
        if line.gid:
            self.close_run(user, line)
        line.before += 1
        self._dirty.add(user)
        return line.before

    def close_run(self, user: str, line: Line) -> None:
        head = line.before + self.gseq(line.gid) - line.gstart + 1
        meta = self.meta(user, line.gid)
        if meta is not None:
            meta[1] += head - line.before  # the group's messages in closed runs
        on = self.lines.open_on.get(line.gid)
        if on is not None:
            on.pop(user, None)
        line.before, line.gstart, line.gid = head, 0, ""
        self._dirty.add(user)

    def user_exists(self, user: str) -> bool:
        if user in self.known_users:
            return True
        if self.get(K.user_key(user)) is not None:
            if len(self.known_users) > 200_000:
                self.known_users.clear()
            self.known_users.add(user)
            return True
        return False

    def meta(self, owner: str, peer: str) -> list[int] | None:
        meta = self._metas.get((owner, peer))
        if meta is None:
            raw = self._read(K.meta_key(owner, peer))
            if raw is None:
                return None
            meta = K.unpack_meta(raw)
            meta.append(meta[0])
            self._metas[(owner, peer)] = meta
        return meta

    def finish(self) -> None:
        """Write the values kept in the overlays once per batch, not once per operation."""
        self.finish_groups()
        lines = self.lines.lines
        for user in self._dirty:
            self.wb.put(K.head_key(user), lines[user].packed())
        for (owner, peer), meta in self._metas.items():
            if meta[0] == 0:  # dropped by retention
                self.wb.delete(K.meta_key(owner, peer))
            else:
                self.wb.put(K.meta_key(owner, peer), K.pack_meta(meta))
            if meta[5] != meta[0]:
                if meta[5]:
                    self.wb.delete(K.recent_key(owner, meta[5]))
                if meta[0]:
                    self.wb.put(K.recent_key(owner, meta[0]), peer.encode())

    # ---- operations ---------------------------------------------------------------------
    def apply(self, op: WriteOp) -> Any:
        handler: Callable[[Any], Any] = getattr(self, _HANDLERS[type(op)])
        return handler(op)

    def create_user(self, op: CreateUser) -> bool:
        key = K.user_key(op.username)
        if self.get(key) is not None:
            return False
        record = UserRecord(op.username, op.password_hash, op.ts)
        self.put(key, msgspec.msgpack.encode(record))
        self.index_user(record)
        self.new_users.append(op.username)
        return True

    # A token record and its key among its user's sessions change together, in one
    # WriteBatch; the record, not the operation, names the user and the id.
    def _token(self, token_hash: bytes) -> TokenRecord | None:
        raw = self.get(K.token_key(token_hash))
        return None if raw is None else msgspec.msgpack.decode(raw, type=TokenRecord)

    def put_token(self, op: PutToken) -> None:
        record = TokenRecord(op.username, op.device, op.ts, op.ts, op.user_agent)
        self.put(K.token_key(op.token_hash), msgspec.msgpack.encode(record))
        self.wb.put(K.session_key(op.username, op.device), op.token_hash)

    def delete_token(self, op: DeleteToken) -> None:
        record = self._token(op.token_hash)
        if record is not None:
            self.wb.delete(K.session_key(record.username, record.device))
            self.delete(K.token_key(op.token_hash))

    def touch_token(self, op: TouchToken) -> None:
        record = self._token(op.token_hash)
        if record is None or op.ts <= record.last_used:
            return  # deleted meanwhile (stays deleted), or already as recent
        if not record.last_used:  # written before sessions were listed: not indexed yet
            self.wb.put(K.session_key(record.username, record.device), op.token_hash)
        used = msgspec.structs.replace(record, last_used=op.ts)
        self.put(K.token_key(op.token_hash), msgspec.msgpack.encode(used))

    def append_message(self, op: AppendMessage) -> SendResult:
        sender, recipient = op.sender, op.recipient
        dkey = K.dedupe_key(sender, sender, op.client_id)
        earlier = self._sent.get(dkey)
        if earlier is not None:
            return SendResult(earlier.id, earlier.seq, earlier.ts, earlier.client_id, True)
        raw_seq = self.get(dkey)
        if raw_seq is not None:
            return self._original_answer(sender, K.unpack_u64(raw_seq), op.client_id)
        if sender == recipient:
            raise bad_request("A message needs a recipient other than its sender.")
        if not self.user_exists(recipient):
            raise unknown_user(recipient)
        # The two copies differ only in seq, which leads the JSON: encode once, splice twice.
        tail = message_tail(
            MessageEvent(
                seq=0,
                id=op.id,
                from_=sender,
                to=recipient,
                body=op.body,
                ts=op.ts,
                client_id=op.client_id,
            )
        )
        if self.blocked(recipient, sender):
            return self._outgoing_only(op, dkey, tail)
        rseq = self.next_seq(recipient)
        sseq = self.next_seq(sender)
        incoming = with_seq(rseq, tail)
        outgoing = with_seq(sseq, tail)
        # Recipient first, then sender: within one WriteBatch both land atomically anyway.
        self.wb.put(
            K.timeline_key(recipient, rseq), K.timeline_value(K.KIND_IN, sseq, sender, incoming)
        )
        self.wb.put(
            K.timeline_key(sender, sseq), K.timeline_value(K.KIND_OUT, rseq, recipient, outgoing)
        )
        self._touch_conversation(recipient, sender, rseq, sseq, incoming=True)
        self._touch_conversation(sender, recipient, sseq, rseq, incoming=False)
        self.put(dkey, K.pack_u64(sseq))
        result = SendResult(
            op.id,
            sseq,
            op.ts,
            op.client_id,
            False,
            (Published(recipient, rseq, incoming), Published(sender, sseq, outgoing)),
        )
        self._sent[dkey] = result
        return result

    def _outgoing_only(self, op: AppendMessage, dkey: bytes, tail: bytes) -> SendResult:
        """A send to someone who blocked the sender: answered as usual, stored in the
        sender's timeline alone (counterpart 0: no incoming copy exists)."""
        sseq = self.next_seq(op.sender)
        outgoing = with_seq(sseq, tail)
        self.wb.put(
            K.timeline_key(op.sender, sseq),
            K.timeline_value(K.KIND_OUT, 0, op.recipient, outgoing),
        )
        self._touch_conversation(op.sender, op.recipient, sseq, 0, incoming=False)
        self.put(dkey, K.pack_u64(sseq))
        result = SendResult(
            op.id, sseq, op.ts, op.client_id, False, (Published(op.sender, sseq, outgoing),)
        )
        self._sent[dkey] = result
        return result

    def _original_answer(self, sender: str, seq: int, client_id: str) -> SendResult:
        event = entry_at(self.db, sender, seq)
        if event is None:
            raise CourierError("store_inconsistent", "The original message is gone.", 500)
        ev = peek(event)
        return SendResult(ev.id, seq, ev.ts, client_id, True)

    def _touch_conversation(
        self, owner: str, peer: str, seq: int, counterpart: int, *, incoming: bool
    ) -> None:
        meta = self.meta(owner, peer)
        if meta is None:
            meta = [0, 0, 0, 0, 0, 0]
            self._metas[(owner, peer)] = meta
        if incoming:
            meta[1] += 1
            meta[4] = counterpart
        meta[0] = seq
        self.wb.put(K.conv_key(owner, peer, seq), K.pack_conv(meta[1], meta[4]))

    def advance_ack(self, op: AdvanceAck) -> AckAdvance:
        seq = min(op.seq, self.committed_head(op.user))
        dkey = K.ack_key(op.user, op.device)
        raw = self.get(dkey)
        if raw is None or K.unpack_u64(raw) < seq:
            self.put(dkey, K.pack_u64(seq))
        mkey = K.ack_max_key(op.user)
        raw = self.get(mkey)
        before = K.unpack_u64(raw) if raw else 0
        if seq > before:
            self.put(mkey, K.pack_u64(seq))
            return AckAdvance(before, seq)
        return AckAdvance(before, before)

    def mark_read(self, op: MarkRead) -> int | tuple[tuple[str, int], ...]:
        seq = min(op.seq, self.committed_head(op.user))
        meta = self.meta(op.user, op.peer)
        if meta is None:
            return () if is_group(op.peer) else 0
        if is_group(op.peer):
            return self._mark_group_read(op.user, op.peer, seq, meta)
        prefix = K.conv_prefix(op.user, op.peer)
        it = self.db.iter()
        it.seek_for_prev(prefix + K.pack_u64(seq))
        if not it.valid() or not it.key().startswith(prefix):
            return 0
        ordinal, counterpart = K.unpack_conv(it.value())
        if seq > meta[2]:
            meta[2], meta[3] = seq, ordinal
        # Answered even when the marker did not move, so a receipt lost to a crash after
        # this commit is produced by the client's next read (receipts are max-registers).
        return counterpart

    def _mark_group_read(
        self, user: str, gid: str, seq: int, meta: list[int]
    ) -> tuple[tuple[str, int], ...]:
        """Moves the marker to `seq` (incoming messages read: the group's messages up to it
        less the user's own), and answers (author, author's seq) of the newest message of
        each author newly read (or, when nothing moved, of the last few: a receipt lost to a
        crash comes again). Reads committed entries only: `seq` is clamped to them."""
        prefix = K.conv_prefix(user, gid)
        it = self.db.iter()
        it.seek_for_prev(prefix + K.pack_u64(seq))
        if not it.valid() or not it.key().startswith(prefix):
            return ()
        at = K.seq_of(it.key())
        messages, gstart = K.unpack_conv(it.value())
        head = read_head(self.db, user)
        if gstart:  # inside (or past the end of) a run starting at `at`
            end = run_end_committed(self.db, user, at, head)
            messages += min(seq, end) - at + 1
        own = 0
        oprefix = K.own_prefix(user, gid)
        it.seek_for_prev(oprefix + K.pack_u64(seq))
        if it.valid() and it.key().startswith(oprefix):
            own = K.unpack_u64(it.value())
        before = meta[2]
        if seq > before:
            meta[2], meta[3] = seq, messages - own
        lo = before + 1 if seq > before else max(seq - 50, 1)
        newest: dict[str, int] = {}
        budget = READ_SCAN_MAX
        for group, first, last in reversed(run_ranges(self.db, user, lo, seq, head)):
            if group != gid:
                continue
            for flags, author_seq, author in log_authors(self.db, gid, first, last, budget):
                budget -= 1
                if not flags & K.LOG_RECEIPTS:
                    break  # a group too large for receipts (newest first: older too)
                if author != user:
                    newest[author] = max(newest.get(author, 0), author_seq)
            if budget <= 0:
                break
        return tuple(newest.items())

    def append_receipt(self, op: AppendReceipt) -> Published | None:
        if not op.group and self.blocked(op.owner, op.peer):
            return None  # the owner blocked the reader: no receipt from them
        key = K.receipt_key(op.owner, op.peer, op.status, op.group)
        raw = self.get(key)
        if raw is not None and K.unpack_u64(raw) >= op.up_to:
            return None
        self.put(key, K.pack_u64(op.up_to))
        if op.status == "read":  # read implies delivered: no later, smaller delivered receipt
            dkey = K.receipt_key(op.owner, op.peer, "delivered", op.group)
            draw = self.get(dkey)
            if draw is None or K.unpack_u64(draw) < op.up_to:
                self.put(dkey, K.pack_u64(op.up_to))
        seq = self.next_seq(op.owner)
        if op.group:
            event = msgspec.json.encode(
                GroupReceiptEvent(
                    seq=seq,
                    status=op.status,
                    group=op.group,
                    peer=op.peer,
                    up_to=op.up_to,
                    ts=op.ts,
                )
            )
        else:
            event = encode_event(
                ReceiptEvent(seq=seq, status=op.status, peer=op.peer, up_to=op.up_to, ts=op.ts)
            )
        self.wb.put(
            K.timeline_key(op.owner, seq), K.timeline_value(K.KIND_RECEIPT, 0, op.peer, event)
        )
        return Published(op.owner, seq, event)

    def sweep(self, op: Sweep) -> tuple[int, str]:
        dropped, last_user, visited = 0, "", 0
        it = self.db.iter()
        it.seek(K.user_key(op.start_user) + b"\x00" if op.start_user else K.USER_PREFIX)
        users: list[str] = []
        while it.valid() and visited < op.max_users:
            key = it.key()
            if not key.startswith(K.USER_PREFIX):
                break
            users.append(key[1:].decode())
            visited += 1
            it.next()
        for user in users:
            dropped += self._sweep_user(user, op.cutoff_ts)
            last_user = user
        return dropped, last_user

    def _sweep_user(self, user: str, cutoff_ts: int) -> int:
        prefix = K.timeline_prefix(user)
        it = self.db.iter()
        it.seek(prefix)
        dropped = 0
        left: set[str] = set()  # groups of the dropped entries (the user may have left them)
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            kind, _cp, peer, event = K.parse_timeline_value(it.value())
            if kind == K.KIND_GROUP_RUN:
                left.add(peer)
                swept = self._sweep_run(user, it, cutoff_ts)
                if swept is None:
                    break
                dropped += swept
                continue
            ev = peek(event)
            if ev.ts >= cutoff_ts:
                break
            seq = K.seq_of(key)
            self.wb.delete(key)
            if is_group(peer):
                left.add(peer)
            if kind != K.KIND_RECEIPT:
                self.wb.delete(K.conv_key(user, peer, seq))
                meta = self.meta(user, peer)
                if meta is not None and meta[0] == seq:
                    meta[0] = 0  # the newest message of the conversation is gone
                if kind == K.KIND_OUT and ev.client_id:
                    self.delete(K.dedupe_key(user, user, ev.client_id))
            dropped += 1
            it.next()
        return dropped + self._sweep_group_logs(user, cutoff_ts, left)

    def _sweep_run(self, user: str, it: Any, cutoff_ts: int) -> int | None:
        """Drops the run at the iterator when its newest message is older than the cutoff
        (with the user's own messages' dedupe keys); None when it stays, which ends the
        sweep of this user. An open run (the newest entry) always stays. The iterator moves
        to the next entry."""
        key, value = it.key(), it.value()
        start = K.seq_of(key)
        _kind, gstart, gid, _event = K.parse_timeline_value(value)
        it.next()
        prefix = K.timeline_prefix(user)
        if not it.valid() or not it.key().startswith(prefix):
            return None
        end = K.seq_of(it.key()) - 1
        last = self.db.get(K.group_log_key(gid, gstart + end - start))
        if last is not None and peek(b'{"seq":0' + K.parse_log_value(last)[3]).ts >= cutoff_ts:
            return None
        self.wb.delete(key)
        self.wb.delete(K.conv_key(user, gid, start))
        meta = self.meta(user, gid)
        if meta is not None and meta[0] == start:
            meta[0] = 0
        logs = self.db.iter()
        log_prefix = K.group_log_prefix(gid)
        logs.seek(K.group_log_key(gid, gstart))
        while logs.valid() and logs.key().startswith(log_prefix):
            gseq = K.seq_of(logs.key())
            if gseq > gstart + end - start:
                break
            _flags, _aseq, author, tail = K.parse_log_value(logs.value())
            if author == user:
                self.delete(K.dedupe_key(user, user, peek(b'{"seq":0' + tail).client_id))
                self.wb.delete(K.own_key(user, gid, start + gseq - gstart))
            logs.next()
        return end - start + 1

    def _sweep_group_logs(self, user: str, cutoff_ts: int, left: set[str]) -> int:
        """The old entries of the logs of `user`'s groups, and of the groups of the entries
        just dropped (groups the user left, or that ended with nobody in them): every
        member's references to them are at least as old, so they go in the same sweep, and
        readers skip what is gone. Not counted as events."""
        prefix = K.member_of_prefix(user)
        it = self.db.iter()
        it.seek(prefix)
        gids: set[str] = set(left)
        while it.valid() and it.key().startswith(prefix) and len(gids) < 10_000:
            gids.add(it.key()[len(prefix) :].decode())
            it.next()
        for gid in sorted(gids):
            log_prefix = K.group_log_prefix(gid)
            lit = self.db.iter()
            lit.seek(log_prefix)
            while lit.valid() and lit.key().startswith(log_prefix):
                _flags, _aseq, author, tail = K.parse_log_value(lit.value())
                ev = peek(b'{"seq":0' + tail)
                if ev.ts >= cutoff_ts:
                    break
                self.wb.delete(lit.key())
                # A retry of a message this old is a new message (as in 1:1), also while
                # the author's run holding it is still open.
                self.delete(K.dedupe_key(author, author, ev.client_id))
                lit.next()
        return 0


_HANDLERS: dict[type, str] = {
    CreateUser: "create_user",
    PutToken: "put_token",
    DeleteToken: "delete_token",
    TouchToken: "touch_token",
    SetProfile: "set_profile",
    SetBlock: "set_block",
    SetLastSeen: "set_last_seen",
    AppendMessage: "append_message",
    AdvanceAck: "advance_ack",
    MarkRead: "mark_read",
    AppendReceipt: "append_receipt",
    AppendGroupMessage: "append_group_message",
    CreateGroup: "create_group",
    ChangeGroup: "change_group",
    Sweep: "sweep",
}

"""Reading timelines whose entries may be runs of group messages (see rocks_lines).

A stored entry is either an event (its wire JSON after a small header) or a run: seqs
s, s+1, ... standing for a group's log entries gstart, gstart+1, ..., up to the next entry
or the head. Readers expand runs from the group's log, where each message is stored once,
splicing each seq before the shared tail.

No snapshot is needed: entries at or below a head once read never change (runs end where
the next entry begins, and every entry of a group's log is written with its gseq), and the
head itself is read so that the group's newest gseq and the user's head key agree (the head
key is read again after the gseq; a commit in between is seen and the read repeated).
"""

from __future__ import annotations

from typing import Any, cast

from rocksdict import Rdict

from courier.adapters import rocks_keys as K
from courier.domain.events import with_seq
from courier.domain.groups import is_group

Rows = list[tuple[int, bytes]]
_END = (1 << 64) - 1


class Head:
    """A user's head, and the open run it ends in (gid "" when none)."""

    __slots__ = ("gid", "gstart", "seq", "start")

    def __init__(self, seq: int, start: int = 0, gstart: int = 0, gid: str = "") -> None:
        self.seq = seq
        self.start = start
        self.gstart = gstart
        self.gid = gid


def read_head(db: Rdict, user: str) -> Head:
    key = K.head_key(user)
    raw = db.get(key)
    for _ in range(100):
        if raw is None:
            return Head(0)
        before, gstart, gid = K.unpack_head(raw)
        if not gid:
            return Head(before)
        q = db.get(K.gseq_key(gid))
        again = db.get(key)
        if again == raw:
            gseq = K.unpack_u64(q) if q else gstart
            return Head(before + gseq - gstart + 1, before + 1, gstart, gid)
        raw = again
    raise RuntimeError("the head kept changing while it was read")


def _log_range(db: Rdict, gid: str, first: int, last: int) -> list[tuple[int, bytes]]:
    """(gseq, tail) of the group's log entries first..last (retention may have taken some)."""
    prefix = K.group_log_prefix(gid)
    it = db.iter()
    it.seek(prefix + K.pack_u64(first))
    out: list[tuple[int, bytes]] = []
    while it.valid():
        key = it.key()
        if not key.startswith(prefix):
            break
        gseq = K.seq_of(key)
        if gseq > last:
            break
        out.append((gseq, K.parse_log_value(it.value())[3]))
        it.next()
    return out


def expand(db: Rdict, start: int, gstart: int, gid: str, lo: int, hi: int) -> Rows:
    """The events of seqs lo..hi of the run starting at `start`, oldest first."""
    if hi < lo:
        return []
    shift = start - gstart
    return [
        (gseq + shift, with_seq(gseq + shift, tail))
        for gseq, tail in _log_range(db, gid, gstart + lo - start, gstart + hi - start)
    ]


def events_after(db: Rdict, user: str, after: int, limit: int) -> Rows:
    head = read_head(db, user)
    last = min(head.seq, after + limit)
    if last <= after:
        return []
    prefix = K.timeline_prefix(user)
    it = db.iter()
    it.seek_for_prev(prefix + K.pack_u64(after + 1))
    if not it.valid() or not it.key().startswith(prefix):
        it.seek(prefix + K.pack_u64(after + 1))
    out: Rows = []
    while it.valid() and len(out) < limit:
        key = it.key()
        if not key.startswith(prefix):
            break
        seq = K.seq_of(key)
        if seq > last:
            break
        kind, gstart, gid, event = K.parse_timeline_value(it.value())
        it.next()
        if kind != K.KIND_GROUP_RUN:
            if seq > after:
                out.append((seq, event))
            continue
        nxt = K.seq_of(it.key()) if it.valid() and it.key().startswith(prefix) else _END
        end = min(nxt - 1, last)
        out += expand(db, seq, gstart, gid, max(seq, after + 1), end)
    return out[:limit]


def run_end(db: Rdict, user: str, start: int, head: Head) -> int:
    """The last seq of the run that starts at `start`."""
    prefix = K.timeline_prefix(user)
    it = db.iter()
    it.seek(prefix + K.pack_u64(start + 1))
    if it.valid() and it.key().startswith(prefix):
        return min(K.seq_of(it.key()) - 1, head.seq)
    return head.seq


def entry_at(db: Rdict, user: str, seq: int) -> bytes | None:
    """The event at `seq` of `user`'s timeline (None when there is none)."""
    prefix = K.timeline_prefix(user)
    it = db.iter()
    it.seek_for_prev(prefix + K.pack_u64(seq))
    if not it.valid() or not it.key().startswith(prefix):
        return None
    at = K.seq_of(it.key())
    kind, gstart, gid, event = K.parse_timeline_value(it.value())
    if kind != K.KIND_GROUP_RUN:
        return event if at == seq else None
    logged = db.get(K.group_log_key(gid, gstart + seq - at))
    return None if logged is None else with_seq(seq, K.parse_log_value(logged)[3])


def events_at(db: Rdict, user: str, seqs: list[int]) -> Rows:
    """The events at these seqs (explicit entries in one multi-get), in the order given."""
    keys = [K.timeline_key(user, s) for s in seqs]
    values = cast("list[bytes | None]", db.get(list[Any](keys)))
    out: Rows = []
    for seq, raw in zip(seqs, values, strict=True):
        if raw is not None and raw[0] != K.KIND_GROUP_RUN:
            out.append((seq, K.event_of(raw)))
        else:
            event = entry_at(db, user, seq)
            if event is not None:
                out.append((seq, event))
    return out


def history(db: Rdict, user: str, conversation: str, before: int | None, limit: int) -> Rows:
    """The conversation's entries in `user`'s timeline with seq < before, newest first."""
    top = (before - 1) if before is not None else _END
    if top < 1:
        return []
    prefix = K.conv_prefix(user, conversation)
    group = is_group(conversation)
    it = db.iter()
    it.seek_for_prev(prefix + K.pack_u64(top))
    head: Head | None = None
    explicit: list[int] = []
    pieces: list[tuple[int, Rows | None]] = []  # (seq, expanded run) or (seq, None)
    count = 0
    while it.valid() and count < limit:
        key = it.key()
        if not key.startswith(prefix):
            break
        seq = K.seq_of(key)
        _ordinal, gstart = K.unpack_conv(it.value())
        it.prev()
        if not group or not gstart:  # an event (a 1:1 message, a membership event)
            explicit.append(seq)
            pieces.append((seq, None))
            count += 1
            continue
        head = head or read_head(db, user)
        end = min(run_end(db, user, seq, head), top)
        lo = max(seq, end - (limit - count) + 1)
        rows = expand(db, seq, gstart, conversation, lo, end)
        rows.reverse()
        pieces.append((seq, rows))
        count += len(rows)
    found = dict(events_at(db, user, explicit)) if explicit else {}
    out: Rows = []
    for seq, piece in pieces:
        if piece is None:
            if seq in found:
                out.append((seq, found[seq]))
        else:
            out += piece
    return out[:limit]


def log_authors(db: Rdict, gid: str, first: int, last: int, cap: int) -> list[tuple[int, int, str]]:
    """(flags, author's seq, author) of the group's log entries first..last, newest first,
    at most `cap`."""
    prefix = K.group_log_prefix(gid)
    it = db.iter()
    it.seek_for_prev(prefix + K.pack_u64(last))
    out: list[tuple[int, int, str]] = []
    while it.valid() and len(out) < cap:
        key = it.key()
        if not key.startswith(prefix) or K.seq_of(key) < first:
            break
        flags, author_seq, author, _tail = K.parse_log_value(it.value())
        out.append((flags, author_seq, author))
        it.prev()
    return out


def run_ranges(db: Rdict, user: str, lo: int, hi: int, head: Head) -> list[tuple[str, int, int]]:
    """(group, first gseq, last gseq) of the group messages at seqs lo..hi."""
    prefix = K.timeline_prefix(user)
    it = db.iter()
    it.seek_for_prev(prefix + K.pack_u64(lo))
    if not it.valid() or not it.key().startswith(prefix):
        it.seek(prefix + K.pack_u64(lo))
    out: list[tuple[str, int, int]] = []
    while it.valid():
        key = it.key()
        if not key.startswith(prefix):
            break
        seq = K.seq_of(key)
        if seq > hi:
            break
        kind, gstart, gid, _event = K.parse_timeline_value(it.value())
        it.next()
        if kind != K.KIND_GROUP_RUN:
            continue
        nxt = K.seq_of(it.key()) if it.valid() and it.key().startswith(prefix) else _END
        end = min(nxt - 1, hi, head.seq)
        first = max(seq, lo)
        if end >= first:
            out.append((gid, gstart + first - seq, gstart + end - seq))
    return out

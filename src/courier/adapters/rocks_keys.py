"""RocksDB key layout (documented in docs/storage.md).

Keys follow the seed's HBase row-key idea: a one-byte family prefix, then the owning user, so
that everything of one user is contiguous and every read is a point get or a range scan.
Usernames never contain NUL, so NUL separates components and keeps prefixes unambiguous
("bob\\0" sorts before "bobby"). Seqs are 8-byte big-endian, so byte order is numeric order.
"""

from __future__ import annotations

import struct

SEP = b"\x00"
_Q = struct.Struct(">Q")
pack_u64 = _Q.pack


def unpack_u64(raw: bytes) -> int:
    value: int = _Q.unpack(raw)[0]
    return value


def _u(user: str) -> bytes:
    return user.encode()


def user_key(user: str) -> bytes:
    return b"u" + _u(user)


USER_PREFIX = b"u"


def token_key(token_hash: bytes) -> bytes:
    return b"k" + token_hash


TOKEN_PREFIX = b"k"


def session_prefix(user: str) -> bytes:
    return b"s" + _u(user) + SEP


def session_key(user: str, session_id: str) -> bytes:
    """A user's sessions by id (the value: the token hash). The key never moves when the
    session is used, so using sessions leaves no deleted keys in the user's range."""
    return session_prefix(user) + session_id.encode()


# The layout's version, absent in stores written before sessions were indexed by user.
FORMAT_KEY = b"\x00format"
FORMAT_SESSIONS = 1
FORMAT_PROFILES = 2  # every user has search terms


def term_key(term: str, user: str) -> bytes:
    """A search term of `user` (domain.profiles): a prefix seek finds the users whose
    terms start with a query. Terms are printable text, so they hold no NUL."""
    return b"x" + term.encode() + SEP + _u(user)


def term_prefix(term: str) -> bytes:
    return b"x" + term.encode()


def user_of_term_key(key: bytes) -> str:
    return key[key.rindex(SEP) + 1 :].decode()


def block_prefix(owner: str) -> bytes:
    return b"b" + _u(owner) + SEP


def block_key(owner: str, target: str) -> bytes:
    """`owner` has blocked `target` (the value is empty)."""
    return block_prefix(owner) + _u(target)


def head_key(user: str) -> bytes:
    return b"h" + _u(user)


# Head values: the seq of the newest entry, 8 bytes; or, while the user's newest entry is an
# open run, the seq just before it, the run's first gseq and the group:
# head = before + (the group's newest gseq - gstart + 1).
def pack_head(before: int, gstart: int = 0, gid: str = "") -> bytes:
    if not gid:
        return _Q.pack(before)
    return _Q.pack(before) + _Q.pack(gstart) + gid.encode()


def unpack_head(raw: bytes) -> tuple[int, int, str]:
    """(seq before the open run or the head, the run's first gseq, its group or "")."""
    if len(raw) == 8:
        return unpack_u64(raw), 0, ""
    return unpack_u64(raw[:8]), unpack_u64(raw[8:16]), raw[16:].decode()


def own_prefix(user: str, gid: str) -> bytes:
    return b"o" + _u(user) + SEP + gid.encode() + SEP


def own_key(user: str, gid: str, seq: int) -> bytes:
    """A message `user` sent to the group, at its seq: how many they sent there so far."""
    return own_prefix(user, gid) + _Q.pack(seq)


def timeline_prefix(user: str) -> bytes:
    return b"t" + _u(user) + SEP


def timeline_key(user: str, seq: int) -> bytes:
    return b"t" + _u(user) + SEP + _Q.pack(seq)


def conv_prefix(user: str, peer: str) -> bytes:
    return b"c" + _u(user) + SEP + _u(peer) + SEP


def conv_key(user: str, peer: str, seq: int) -> bytes:
    return conv_prefix(user, peer) + _Q.pack(seq)


def meta_key(user: str, peer: str) -> bytes:
    return b"m" + _u(user) + SEP + _u(peer)


def recent_prefix(user: str) -> bytes:
    return b"r" + _u(user) + SEP


def recent_key(user: str, seq: int) -> bytes:
    return recent_prefix(user) + _Q.pack(seq)


def dedupe_key(owner: str, sender: str, client_id: str) -> bytes:
    return b"d" + _u(owner) + SEP + _u(sender) + SEP + client_id.encode()


def ack_key(user: str, device: str) -> bytes:
    return b"a" + _u(user) + SEP + device.encode()


def ack_max_key(user: str) -> bytes:
    return b"A" + _u(user)


def receipt_key(owner: str, peer: str, status: str, group: str = "") -> bytes:
    key = b"p" + _u(owner) + SEP + _u(peer) + SEP + status.encode()
    return key + SEP + group.encode() if group else key


def group_key(gid: str) -> bytes:
    """A group's state (name, members with roles)."""
    return b"G" + gid.encode()


def gseq_key(gid: str) -> bytes:
    """The newest entry of a group's log."""
    return b"Q" + gid.encode()


def group_log_key(gid: str, gseq: int) -> bytes:
    """A group message, stored once: members' timelines hold references to it."""
    return b"L" + gid.encode() + SEP + _Q.pack(gseq)


def group_log_prefix(gid: str) -> bytes:
    return b"L" + gid.encode() + SEP


def groups_count_key(user: str) -> bytes:
    """How many groups `user` is in."""
    return b"n" + _u(user)


def member_of_prefix(user: str) -> bytes:
    return b"g" + _u(user) + SEP


def member_of_key(user: str, gid: str) -> bytes:
    """The groups of a user, listed by a prefix scan."""
    return member_of_prefix(user) + gid.encode()


def seq_of(key: bytes) -> int:
    """The trailing seq of a timeline, conversation or recency key."""
    return unpack_u64(key[-8:])


# Timeline values: a small header the writer and sweeper read without decoding JSON, then
# the event exactly as it goes on the wire.
KIND_IN = 1  # incoming message; counterpart = seq of the sender's outgoing copy
KIND_OUT = 2  # outgoing copy; counterpart = seq in the recipient's timeline
KIND_RECEIPT = 3
KIND_GROUP_EVENT = 6  # a membership event (the whole event stored: they are rare)
# A run of one group's messages: the entry at seq s, counterpart = gstart, peer = the group,
# stands for seqs s, s+1, ... holding the group's log entries gstart, gstart+1, ...; it ends
# where the timeline's next entry begins, or, for the newest entry, at the head. A member's
# open run grows with every message of its group and costs no write per message.
KIND_GROUP_RUN = 7
_HDR = struct.Struct(">BQB")


def timeline_value(kind: int, counterpart: int, peer: str, event: bytes) -> bytes:
    p = _u(peer)
    return _HDR.pack(kind, counterpart, len(p)) + p + event


def parse_timeline_value(raw: bytes) -> tuple[int, int, str, bytes]:
    """(kind, counterpart, peer, event JSON)."""
    kind, counterpart, plen = _HDR.unpack_from(raw)
    start = _HDR.size + plen
    return kind, counterpart, raw[_HDR.size : start].decode(), raw[start:]


def event_of(raw: bytes) -> bytes:
    """The wire JSON of a stored timeline value."""
    return raw[_HDR.size + raw[_HDR.size - 1] :]


# Conversation entries: (incoming messages so far, sender-side seq of the newest incoming
# message so far). Both are running values, so one seek answers "unread" and "read up to".
_CONV = struct.Struct(">QQ")
pack_conv = _CONV.pack


def unpack_conv(raw: bytes) -> tuple[int, int]:
    ordinal, counterpart = _CONV.unpack(raw)
    return int(ordinal), int(counterpart)


# Conversation meta: last_seq, incoming total, read_seq, read ordinal, newest incoming
# counterpart.
_META = struct.Struct(">QQQQQ")


def pack_meta(meta: list[int]) -> bytes:
    return _META.pack(*meta[:5])


def unpack_meta(raw: bytes) -> list[int]:
    return list(_META.unpack(raw))


# Group log values: flags, the author's seq of their outgoing copy, the author, then the
# event's encoding after its seq (each member's event is `{"seq":N` + this tail).
LOG_RECEIPTS = 1  # the group was small enough for per-member receipts when this was sent
_LOG = struct.Struct(">BQB")


def log_value(flags: int, author_seq: int, author: str, tail: bytes) -> bytes:
    a = _u(author)
    return _LOG.pack(flags, author_seq, len(a)) + a + tail


def parse_log_value(raw: bytes) -> tuple[int, int, str, bytes]:
    """(flags, author's seq, author, tail)."""
    flags, author_seq, alen = _LOG.unpack_from(raw)
    start = _LOG.size + alen
    return flags, author_seq, raw[_LOG.size : start].decode(), raw[start:]

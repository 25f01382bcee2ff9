"""Reading timeline values that are references to a group's log.

A member's timeline holds a group message as a reference (the group and the message's place
in its log); the event is the log's tail after the member's own seq. Readers turn values
into wire events here, with one multi-get per page for the references among them.
"""

from __future__ import annotations

from typing import Any, cast

from rocksdict import Rdict

from courier.adapters import rocks_keys as K
from courier.domain.events import with_seq


def resolve(db: Any, seq: int, raw: bytes) -> bytes | None:
    """The wire event of one stored timeline value (None: its log entry is gone)."""
    kind, gseq, gid, event = K.parse_timeline_value(raw)
    if kind not in K.GROUP_REFS:
        return event
    logged = db.get(K.group_log_key(gid, gseq))
    return None if logged is None else with_seq(seq, K.parse_log_value(logged)[3])


def resolve_many(db: Rdict, rows: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """Wire events of stored (seq, value) rows, in order; a reference whose log entry is
    gone (retention) is left out."""
    refs: list[tuple[int, bytes]] = []
    parsed: list[tuple[int, bytes]] = []
    for seq, raw in rows:
        kind, gseq, gid, event = K.parse_timeline_value(raw)
        if kind in K.GROUP_REFS:
            refs.append((len(parsed), K.group_log_key(gid, gseq)))
        parsed.append((seq, event))
    if not refs:
        return parsed
    logged = cast("list[bytes | None]", db.get([key for _, key in refs]))
    gone: set[int] = set()
    for (i, _key), value in zip(refs, logged, strict=True):
        if value is None:
            gone.add(i)
        else:
            parsed[i] = (parsed[i][0], with_seq(parsed[i][0], K.parse_log_value(value)[3]))
    return [row for i, row in enumerate(parsed) if i not in gone]


def log_entries(db: Rdict, keys: list[tuple[str, int]]) -> list[tuple[int, int, str] | None]:
    """(flags, author's seq, author) of group log entries named by (group, gseq)."""
    values = cast("list[bytes | None]", db.get([K.group_log_key(g, q) for g, q in keys]))
    out: list[tuple[int, int, str] | None] = []
    for value in values:
        if value is None:
            out.append(None)
        else:
            flags, author_seq, author, _tail = K.parse_log_value(value)
            out.append((flags, author_seq, author))
    return out

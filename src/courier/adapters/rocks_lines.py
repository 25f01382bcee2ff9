"""Each user's timeline head, as the RocksDB writer keeps it (runs of group messages).

A user's newest timeline entry may be an open run of one group's messages (rocks_keys,
KIND_GROUP_RUN): while it is open, every message of that group lands in the user's timeline
without a write for the user. The writer keeps, per user, the seq before the open run and the
run's group and first gseq (`Line`), and per group the members whose open run is on it, with
their offset (member seq = gseq + offset). A message to a group then writes only for the
members that are not on it yet: their previous run ends (implicitly: a run ends where the
next entry begins) and a run on this group opens.

The writer is the only mutator, so this state is the database's, cached; it is rebuilt from
the head keys whenever it is dropped (a failed batch drops it all).
"""

from __future__ import annotations

from typing import Any, cast

from rocksdict import Rdict

from courier.adapters import rocks_keys as K

LINES_MAX = 300_000


class Line:
    """`before`: the head, or with an open run (gid set) the seq before the run."""

    __slots__ = ("before", "gid", "gstart")

    def __init__(self, before: int, gstart: int = 0, gid: str = "") -> None:
        self.before = before
        self.gstart = gstart
        self.gid = gid

    def packed(self) -> bytes:
        return K.pack_head(self.before, self.gstart, self.gid)


class Lines:
    def __init__(self) -> None:
        self.lines: dict[str, Line] = {}
        # group -> {member: offset} for members whose open run is on the group; complete
        # only for groups in `loaded`.
        self.open_on: dict[str, dict[str, int]] = {}
        self.loaded: set[str] = set()

    def clear(self) -> None:
        self.lines.clear()
        self.open_on.clear()
        self.loaded.clear()

    def trim(self) -> None:
        if len(self.lines) > LINES_MAX:
            self.clear()

    def line(self, db: Rdict, user: str, raw: bytes | None = None, *, known: bool = False) -> Line:
        line = self.lines.get(user)
        if line is None:
            if not known:
                raw = db.get(K.head_key(user))
            line = Line(*K.unpack_head(raw)) if raw else Line(0)
            self.lines[user] = line
        return line

    def load_group(self, db: Rdict, gid: str, members: tuple[str, ...]) -> dict[str, int]:
        """The members on `gid` and their offsets, reading the heads not cached yet."""
        if gid in self.loaded:
            return self.open_on.setdefault(gid, {})
        missing = [u for u in members if u not in self.lines]
        if missing:
            values = cast("list[bytes | None]", db.get(list[Any](K.head_key(u) for u in missing)))
            for user, raw in zip(missing, values, strict=True):
                self.line(db, user, raw, known=True)
        on = self.open_on.setdefault(gid, {})
        for user in members:
            line = self.lines[user]
            if line.gid == gid:
                on[user] = line.before + 1 - line.gstart
        self.loaded.add(gid)
        return on

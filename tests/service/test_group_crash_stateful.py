"""The group state machine with crashes of the embedded store between submit and commit.

A crash step submits a burst of operations at once (1:1 and group sends, retries among them,
acks, 1:1 and group read markers, at most one membership change), lets the writer commit
the first few it takes and drops every later one unanswered, as a process that dies with
operations queued would; then the store is reopened and the client retries what got no
answer, with the same client_ids. Everything acknowledged before the crash is there, each
retry lands exactly once, and every invariant of the group machine holds after each step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import rule
from rocksdict import WriteOptions

from courier.adapters.rocks_store import RocksStore
from courier.adapters.rocks_wal import WalSync
from courier.domain.errors import CourierError
from courier.domain.ops import SendResult
from tests.service.test_group_rules_stateful import GroupRules
from tests.service.test_rules_stateful import USERS, names

ROLES = st.sampled_from(["member", "admin", "owner"])
# (kind, user, other user, number): what one operation of a burst does (see `start`).
Planned = tuple[str, str, str, int]
burst_ops = st.tuples(
    st.sampled_from(["send", "gsend", "gsend", "gread", "read", "ack", "add", "remove"]),
    names,
    names,
    st.integers(0, 5),
)


class Crashed(Exception):
    """The store died before this operation was committed: no answer came."""


def crash_after(store: RocksStore, survivors: int) -> None:
    """From now on the writer commits the next `survivors` operations it takes (in queue
    order, as it always does) and drops every later one without writing it."""
    commit = store._commit
    left = survivors
    loop = asyncio.get_running_loop()

    def crashing(items: list[Any], write_opts: WriteOptions, wal: WalSync | None) -> None:
        nonlocal left
        kept, dropped = items[:left], items[left:]
        left -= len(kept)
        if kept:
            commit(kept, write_opts, wal)
        if dropped:
            loop.call_soon_threadsafe(_fail, [fut for _op, fut in dropped])

    store._commit = crashing  # type: ignore[method-assign]


def _fail(futures: list[asyncio.Future[Any]]) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_exception(Crashed())


class CrashingGroupRules(GroupRules):
    kind = "rocks"

    @rule(data=st.data(), plan=st.lists(burst_ops, min_size=1, max_size=8))
    def crash_mid_burst(self, data: st.DataObject, plan: list[Planned]) -> None:
        plan = self.feasible(plan)
        if not plan:
            return
        heads = {u: self.run(self.stack.store.head(u)) for u in USERS}
        # Read markers and acks name a seq of the timeline as it is now.
        seqs = [data.draw(st.integers(0, heads[op[1]])) for op in plan]
        gids = [self.gids[op[3] % len(self.gids)] if self.gids else "" for op in plan]
        roles = [data.draw(ROLES) if op[0] == "add" else "" for op in plan]
        survivors = data.draw(st.integers(0, 10), label="survivors")
        calls = [
            self.call(op, gid, seq, role)
            for op, gid, seq, role in zip(plan, gids, seqs, roles, strict=True)
        ]

        async def burst() -> list[Any]:
            crash_after(self.stack.store, survivors)  # type: ignore[arg-type]
            started: list[Awaitable[Any]] = []
            for call in calls:
                started.append(asyncio.ensure_future(call()))
                await asyncio.sleep(0)  # it runs up to its first submit: queue order is ours
            return list(await asyncio.gather(*started, return_exceptions=True))

        outcomes = self.run(burst())
        # What was answered is a prefix of the queue (sends, changes) or independent of
        # order (max-register markers): the model takes the answers first, in order ...
        unanswered = []
        for op, gid, seq, role, outcome in zip(plan, gids, seqs, roles, outcomes, strict=True):
            if isinstance(outcome, Crashed):
                unanswered.append((op, gid, seq, role))
            else:
                self.answered(op, gid, seq, role, outcome)
        event("crash: some unanswered" if unanswered else "crash: all answered")
        self.restart()
        # ... then the client's retries of the rest, one by one, in the order first sent.
        for op, gid, seq, role in unanswered:
            outcome = self.run(answer_of(self.call(op, gid, seq, role)))
            self.answered(op, gid, seq, role, outcome)

    def feasible(self, plan: list[Planned]) -> list[Planned]:
        """Group operations need a group; at most one membership change per burst, and no
        read of its group (a retried read of a group one was removed from is refused, and
        whether the marker moved before the crash would be unknown)."""
        out: list[Planned] = []
        changed: int | None = None
        for op in plan:
            kind = op[0]
            if kind in ("gsend", "gread", "add", "remove") and not self.gids:
                continue
            if kind == "send" and op[1] == op[2]:
                continue
            if kind in ("add", "remove"):
                if changed is not None:
                    continue
                changed = op[3] % len(self.gids)
            out.append(op)
        if changed is not None:
            out = [op for op in out if op[0] != "gread" or op[3] % len(self.gids) != changed]
        return out

    def call(self, op: Planned, gid: str, seq: int, role: str) -> Callable[[], Awaitable[Any]]:
        kind, user, other, n = op
        session = self.sessions[user]
        # The services of the stack as it is when called (a retry runs on the reopened one).
        if kind == "send":
            return lambda: self.stack.delivery.send(session, other, body_of(op), f"{other}-{n}")
        if kind == "gsend":
            cid = f"g{self.gids.index(gid)}-{n}"
            return lambda: self.stack.delivery.send(session, None, body_of(op), cid, group=gid)
        if kind == "gread":
            return lambda: self.stack.delivery.read(session, None, seq, gid)
        if kind == "read":
            return lambda: self.stack.delivery.read(session, other, seq)
        if kind == "ack":
            return lambda: self.stack.delivery.ack(session, seq)
        if kind == "add":
            return lambda: self.groups_service.add(session, gid, other, role)
        return lambda: self.groups_service.remove(session, gid, other)

    def answered(self, op: Planned, gid: str, seq: int, role: str, outcome: Any) -> None:
        """The model takes an answer (a result or an error the client was given)."""
        kind, user, other, n = op
        assert not isinstance(outcome, BaseException) or isinstance(outcome, CourierError), outcome
        if kind == "send":
            assert isinstance(outcome, SendResult), outcome
            self.note_send(user, other, f"{other}-{n}", body_of(op), outcome)
        elif kind == "gsend":
            cid = f"g{self.gids.index(gid)}-{n}"
            if isinstance(outcome, CourierError):
                assert outcome.code == "unknown_group" and user not in self.members[gid]
                assert (user, cid) not in self.gsent
            else:
                self.note_group_send(user, cid, body_of(op), gid, outcome)
        elif kind == "gread":
            if isinstance(outcome, CourierError):
                assert outcome.code == "unknown_group" and user not in self.members[gid]
            else:
                assert outcome is None and user in self.members[gid]
                self.note_read(user, gid, seq)
        elif kind == "read":
            assert outcome is None, outcome
            self.note_read(user, other, seq)
        elif kind == "ack":
            assert outcome is None, outcome
            self.note_ack(user, seq)
        elif kind == "add":
            refusal = self.add_refusal(gid, user, other, role)
            assert getattr(outcome, "code", None) == refusal, (outcome, refusal)
            if refusal is None:
                self.apply_add(gid, user, other, role)
        else:
            refusal = self.remove_refusal(gid, user, other)
            assert getattr(outcome, "code", None) == refusal, (outcome, refusal)
            if refusal is None:
                self.apply_remove(gid, user, other)


async def answer_of(call: Callable[[], Awaitable[Any]]) -> Any:
    """The answer the client gets: a result, or the error."""
    try:
        return await call()
    except CourierError as exc:
        return exc


def body_of(op: Planned) -> str:
    kind, user, other, n = op
    return f"{user}->{other}#{n}" if kind == "send" else f"{user}@{kind}#{n}"


CrashingGroupRules.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCrashingGroupRules = CrashingGroupRules.TestCase

"""Tokens and sessions on PostgreSQL: two rows per login, on two shards.

A token's row (`tokens`) sits on the shard of its hash, so a bearer token is resolved without
knowing its user; the same login's row in `sessions` sits on the shard of its user, so a
user's sessions are one read on one server. Every change writes both rows, as two
operations of one shard each (each is then fenced and held like any other write while its
shard moves), one after the other, in the order that keeps the one promise that matters:
every token that works is listed, so its user can end it.

- login: the session row first, then the token row;
- use (at most once an hour): the session row first, then the token's, so a listed last use
  is never older than the one the expiry checks; both are UPDATEs, so a session ended
  meanwhile stays ended (only a token written before sessions were listed, `created` set,
  gets its session row made here);
- logout, end, expiry: the token row first (it stops working), then the session row.

A crash between the two halves can only leave a listed session without a working token; the
caller's retry (an error reached it) completes the pair, and such a row otherwise goes with
idle expiry. Both halves are idempotent.
"""

from __future__ import annotations

import msgspec

from courier.adapters.pg_schema import Conn
from courier.domain.ops import DeleteToken, PutToken, SessionRecord, TokenRecord, TouchToken
from courier.domain.shards import shard_of

TokenOp = PutToken | TouchToken | DeleteToken


class TokenRow(msgspec.Struct, frozen=True):
    """The half of a token operation on the token's shard (`tokens`)."""

    op: TokenOp


class SessionRow(msgspec.Struct, frozen=True):
    """The half of a token operation on the user's shard (`sessions`)."""

    op: TokenOp


def halves(op: TokenOp) -> tuple[TokenRow | SessionRow, TokenRow | SessionRow]:
    """The two halves of `op`, in the order they must become durable."""
    if isinstance(op, DeleteToken):
        return TokenRow(op), SessionRow(op)
    return SessionRow(op), TokenRow(op)


class SessionWrites:
    """The token and session rows one batch writes, decided in the batch's order and then
    written with one statement per kind."""

    def __init__(self) -> None:
        self._tokens: dict[bytes, TokenRecord | None] = {}  # put, or None: deleted
        self._token_touches: dict[bytes, int] = {}
        self._sessions: dict[tuple[str, str], SessionRecord | None] = {}
        self._session_touches: dict[tuple[str, str], TouchToken] = {}

    def __bool__(self) -> bool:
        return bool(self._tokens or self._token_touches or self._sessions or self._session_touches)

    def plan(self, row: TokenRow | SessionRow) -> None:
        if isinstance(row, TokenRow):
            self._plan_token(row.op)
        else:
            self._plan_session(row.op)

    def _plan_token(self, op: TokenOp) -> None:
        h = op.token_hash
        if isinstance(op, PutToken):
            self._tokens[h] = TokenRecord(op.username, op.device, op.ts, op.ts, op.user_agent)
            self._token_touches.pop(h, None)
        elif isinstance(op, DeleteToken):
            self._tokens[h] = None
            self._token_touches.pop(h, None)
        elif h in self._tokens:
            record = self._tokens[h]
            if record is not None and op.ts > record.last_used:
                self._tokens[h] = msgspec.structs.replace(record, last_used=op.ts)
        else:
            self._token_touches[h] = max(op.ts, self._token_touches.get(h, 0))

    def _plan_session(self, op: TokenOp) -> None:
        key = (op.username, op.device)
        if isinstance(op, PutToken):
            self._sessions[key] = SessionRecord(
                op.device, op.token_hash, op.ts, op.ts, op.user_agent
            )
            self._session_touches.pop(key, None)
        elif isinstance(op, DeleteToken):
            self._sessions[key] = None
            self._session_touches.pop(key, None)
        elif key in self._sessions:
            record = self._sessions[key]
            if record is not None and op.ts > record.last_used:
                self._sessions[key] = msgspec.structs.replace(record, last_used=op.ts)
        else:
            earlier = self._session_touches.get(key)
            if earlier is not None:
                ts, created = max(op.ts, earlier.ts), op.created or earlier.created
                op = msgspec.structs.replace(op, ts=ts, created=created)
            self._session_touches[key] = op

    async def write(self, conn: Conn) -> None:
        await self._write_tokens(conn)
        await self._write_sessions(conn)

    async def _write_tokens(self, conn: Conn) -> None:
        gone = sorted(h for h, rec in self._tokens.items() if rec is None)
        put = sorted((h, rec) for h, rec in self._tokens.items() if rec is not None)
        if gone:
            await conn.execute("DELETE FROM tokens WHERE token_hash = ANY($1::bytea[])", gone)
        if put:
            await conn.execute(
                "INSERT INTO tokens AS t (token_hash, shard, username, device, created,"
                " last_used, user_agent) SELECT * FROM unnest($1::bytea[], $2::int2[],"
                " $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::text[])"
                " ON CONFLICT (token_hash) DO UPDATE SET username = EXCLUDED.username,"
                " device = EXCLUDED.device, created = EXCLUDED.created,"
                " last_used = EXCLUDED.last_used, user_agent = EXCLUDED.user_agent",
                [h for h, _ in put],
                [shard_of(h) for h, _ in put],
                [r.username for _, r in put],
                [r.device for _, r in put],
                [r.created for _, r in put],
                [r.last_used for _, r in put],
                [r.user_agent for _, r in put],
            )
        if self._token_touches:
            touched = sorted(self._token_touches.items())
            # An UPDATE: a token deleted meanwhile stays deleted.
            await conn.execute(
                "UPDATE tokens AS t SET last_used = GREATEST(COALESCE(t.last_used, 0), v.ts)"
                " FROM unnest($1::bytea[], $2::bigint[]) AS v(h, ts) WHERE t.token_hash = v.h",
                [h for h, _ in touched],
                [ts for _, ts in touched],
            )

    async def _write_sessions(self, conn: Conn) -> None:
        gone = sorted(k for k, rec in self._sessions.items() if rec is None)
        put = sorted((k, rec) for k, rec in self._sessions.items() if rec is not None)
        if gone:
            await conn.execute(
                "DELETE FROM sessions AS s USING unnest($1::int2[], $2::text[], $3::text[])"
                " AS k(h, o, i) WHERE s.shard = k.h AND s.owner = k.o AND s.id = k.i",
                [shard_of(o) for o, _ in gone],
                [o for o, _ in gone],
                [i for _, i in gone],
            )
        if put:
            await conn.execute(
                "INSERT INTO sessions AS s (shard, owner, id, token_hash, created, last_used,"
                " user_agent) SELECT * FROM unnest($1::int2[], $2::text[], $3::text[],"
                " $4::bytea[], $5::bigint[], $6::bigint[], $7::text[])"
                " ON CONFLICT (shard, owner, id) DO UPDATE SET token_hash = EXCLUDED.token_hash,"
                " created = EXCLUDED.created, last_used = EXCLUDED.last_used,"
                " user_agent = EXCLUDED.user_agent",
                [shard_of(o) for (o, _), _ in put],
                [o for (o, _), _ in put],
                [i for (_, i), _ in put],
                [r.token_hash for _, r in put],
                [r.created for _, r in put],
                [r.last_used for _, r in put],
                [r.user_agent for _, r in put],
            )
        touched = sorted(self._session_touches.items())
        listed = [(k, op) for k, op in touched if not op.created]
        unlisted = [(k, op) for k, op in touched if op.created]
        if listed:
            # An UPDATE: a session ended meanwhile stays ended.
            await conn.execute(
                "UPDATE sessions AS s SET last_used = GREATEST(s.last_used, v.ts)"
                " FROM unnest($1::int2[], $2::text[], $3::text[], $4::bigint[]) AS v(h, o, i, ts)"
                " WHERE s.shard = v.h AND s.owner = v.o AND s.id = v.i",
                [shard_of(o) for (o, _), _ in listed],
                [o for (o, _), _ in listed],
                [i for (_, i), _ in listed],
                [op.ts for _, op in listed],
            )
        if unlisted:
            # A token written before sessions were listed (at the first start of this
            # version, or by a node of the previous one) gets its row.
            await conn.execute(
                "INSERT INTO sessions AS s (shard, owner, id, token_hash, created, last_used)"
                " SELECT * FROM unnest($1::int2[], $2::text[], $3::text[], $4::bytea[],"
                " $5::bigint[], $6::bigint[]) ON CONFLICT (shard, owner, id)"
                " DO UPDATE SET last_used = GREATEST(s.last_used, EXCLUDED.last_used)",
                [shard_of(o) for (o, _), _ in unlisted],
                [o for (o, _), _ in unlisted],
                [i for (_, i), _ in unlisted],
                [op.token_hash for _, op in unlisted],
                [op.created for _, op in unlisted],
                [op.ts for _, op in unlisted],
            )

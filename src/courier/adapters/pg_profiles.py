"""Profiles, people search and blocks on the cluster store.

A user's record and search terms (domain.profiles) live on the user's server and change in
one transaction there, under the shard fence like every write (a change to a shard moving
away is refused with store_unavailable and retried by the client). A search asks every
server for the range of terms starting with the query, in parallel, and merges the answers
in term order: each server reads its index range and nothing else. A block is a row of the
blocker's (`blocks`), written like a profile and read by the writer batches on that server.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from courier.adapters.pg_movefence import frozen_shards
from courier.domain.errors import store_unavailable
from courier.domain.ops import SetBlock, SetLastSeen, SetProfile, UserRecord
from courier.domain.profiles import TOP, search_terms
from courier.domain.shards import shard_of

if TYPE_CHECKING:
    from courier.adapters.pg_store import PgStore

_SEARCH = (
    "SELECT t.term, u.username, u.password_hash, u.created, u.display_name, u.last_seen"
    " FROM (SELECT DISTINCT ON (username) term, username FROM"
    "  (SELECT term, username FROM user_terms WHERE term >= $1 AND term < $2"
    "   ORDER BY term, username LIMIT $3) AS r ORDER BY username, term) AS t"
    " JOIN users u ON u.username = t.username"
)


class PgProfiles:
    def __init__(self, store: PgStore) -> None:
        self.store = store

    async def set_block(self, op: SetBlock) -> None:
        store = self.store
        shard = shard_of(op.owner)
        async with store._conn(store.server_of(op.owner)) as conn, conn.transaction():
            if shard in await frozen_shards(conn):
                raise store_unavailable()  # the owner's shard is moving: retry
            if op.on:
                await conn.execute(
                    "INSERT INTO blocks (shard, owner, blocked) VALUES ($1, $2, $3)"
                    " ON CONFLICT DO NOTHING",
                    shard,
                    op.owner,
                    op.target,
                )
            else:
                await conn.execute(
                    "DELETE FROM blocks WHERE shard = $1 AND owner = $2 AND blocked = $3",
                    shard,
                    op.owner,
                    op.target,
                )

    async def set_last_seen(self, op: SetLastSeen) -> None:
        store = self.store
        async with store._conn(store.server_of(op.user)) as conn, conn.transaction():
            if shard_of(op.user) in await frozen_shards(conn):
                raise store_unavailable()
            await conn.execute(
                "UPDATE users SET last_seen = $2 WHERE username = $1 AND last_seen < $2",
                op.user,
                op.ts,
            )

    async def blockers_among(self, user: str, owners: list[str]) -> set[str]:
        store = self.store
        by_server: dict[int, list[str]] = {}
        for owner in owners:
            by_server.setdefault(store.server_of(owner), []).append(owner)
        answers = await asyncio.gather(
            *(
                store._fetch(
                    server,
                    "SELECT owner FROM blocks WHERE (shard, owner) IN"
                    " (SELECT * FROM unnest($1::int2[], $2::text[])) AND blocked = $3",
                    [shard_of(o) for o in names],
                    names,
                    user,
                )
                for server, names in by_server.items()
            )
        )
        return {r[0] for rows in answers for r in rows}

    async def contacts_among(self, user: str, candidates: list[str]) -> set[str]:
        if not candidates:
            return set()
        rows = await self.store._fetch(
            self.store.server_of(user),
            "SELECT peer FROM conversations WHERE shard = $1 AND owner = $2"
            " AND peer = ANY($3::text[])",
            shard_of(user),
            user,
            candidates,
        )
        return {r[0] for r in rows}

    async def blocks(self, owner: str, limit: int) -> list[str]:
        rows = await self.store._fetch(
            self.store.server_of(owner),
            "SELECT blocked FROM blocks WHERE shard = $1 AND owner = $2 ORDER BY blocked LIMIT $3",
            shard_of(owner),
            owner,
            limit,
        )
        return [r[0] for r in rows]

    async def blocked(self, owner: str, other: str) -> bool:
        row = await self.store._fetchrow(
            self.store.server_of(owner),
            "SELECT 1 FROM blocks WHERE shard = $1 AND owner = $2 AND blocked = $3",
            shard_of(owner),
            owner,
            other,
        )
        return row is not None

    async def set_profile(self, op: SetProfile) -> UserRecord | None:
        store = self.store
        shard = shard_of(op.username)
        async with store._conn(store.server_of(op.username)) as conn, conn.transaction():
            if shard in await frozen_shards(conn):
                raise store_unavailable()  # the user's shard is moving: retry
            row = await conn.fetchrow(
                "SELECT password_hash, created, display_name, last_seen FROM users"
                " WHERE username = $1 FOR UPDATE",
                op.username,
            )
            if row is None:
                return None
            record = UserRecord(op.username, row[0], row[1], op.display_name, row[3])
            if row[2] == op.display_name:
                return record
            await conn.execute(
                "UPDATE users SET display_name = $2 WHERE username = $1",
                op.username,
                op.display_name,
            )
            terms = search_terms(op.username, op.display_name)
            await conn.execute(
                "DELETE FROM user_terms WHERE username = $1 AND NOT term = ANY($2::text[])",
                op.username,
                terms,
            )
            await conn.execute(
                "INSERT INTO user_terms (term, username, shard)"
                " SELECT unnest($1::text[]), $2, $3 ON CONFLICT DO NOTHING",
                terms,
                op.username,
                shard,
            )
            return record

    async def search(self, term: str, limit: int) -> list[UserRecord]:
        """Each server's first `limit` users by their smallest matching term; merged."""
        store = self.store
        # A user has a few terms: reading 4x the limit of index rows finds `limit` users on
        # a server unless many of its matches are one user's, which only shortens the page.
        answers = await asyncio.gather(
            *(
                store._fetch(server, _SEARCH, term, term + TOP, 4 * limit)
                for server in range(len(store.servers))
            )
        )
        found = sorted((r[0], r[1], r) for rows in answers for r in rows)
        out: list[UserRecord] = []
        seen: set[str] = set()
        for _term, name, r in found:
            if name not in seen:
                seen.add(name)
                out.append(UserRecord(name, r[2], r[3], r[4], r[5]))
        return out[:limit]

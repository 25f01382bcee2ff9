"""Versioned schema migrations for every PostgreSQL server of the cluster store.

Each server holds the rows of the logical shards mapped onto it. Every table carries the
owner's logical `shard`, so moving a shard is `... WHERE shard = X` on the old server, never a
scan that recomputes hashes. Migrations are an ordered list applied at open under an advisory
lock, so several nodes starting at once apply each one exactly once; a version, once
released, is never edited (add a new one instead).

Usernames are `COLLATE "C"`: byte order, which is also Python's `str` order, so a cursor
("users after X") means the same thing in SQL and in the merge across servers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

# A plain connection or one lent by a pool: the store's code takes either.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

# Any constant works; it only has to be the same in every node.
MIGRATION_LOCK = 0x636F7572696572  # "courier"
# Taken shared by every writer batch and exclusively by a shard move freezing a shard, so the
# freeze waits for the batches in flight and every later batch sees it.
FENCE_LOCK = MIGRATION_LOCK + 1

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE users (
            username text COLLATE "C" PRIMARY KEY,
            shard smallint NOT NULL,
            password_hash text NOT NULL,
            created bigint NOT NULL
        );
        -- Users and tokens are few and written rarely: keyed by name, plus a shard index.
        CREATE INDEX users_shard ON users (shard);

        -- Placed by shard_of(token_hash): a token is found without knowing its user.
        CREATE TABLE tokens (
            token_hash bytea PRIMARY KEY,
            shard smallint NOT NULL,
            username text NOT NULL,
            device text NOT NULL,
            created bigint NOT NULL
        );
        CREATE INDEX tokens_shard ON tokens (shard);

        -- The other tables lead their keys with `shard`: the primary key that serves every
        -- read of a user also serves "all rows of shard X" when a shard moves, at no cost
        -- per write.

        -- seq: the timeline head, advanced by UPDATE ... RETURNING once per user per batch.
        -- acked: the ack watermark, the max over the user's devices.
        CREATE TABLE heads (
            shard smallint NOT NULL,
            owner text COLLATE "C" NOT NULL,
            seq bigint NOT NULL DEFAULT 0,
            acked bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (shard, owner)
        ) WITH (fillfactor = 80);

        -- kind: 1 incoming, 2 outgoing, 3 receipt. counterpart: the seq of the other copy in
        -- the peer's timeline (NULL while unknown: an incoming copy written on another server
        -- than its outgoing copy). ordinal, in_cp, in_cid: running values of the conversation
        -- at this row (incoming messages so far; sender-side seq, or client_id when that seq
        -- is on another server, of the newest incoming message so far). event: the wire JSON.
        CREATE TABLE timeline (
            shard smallint NOT NULL,
            owner text COLLATE "C" NOT NULL,
            seq bigint NOT NULL,
            kind smallint NOT NULL,
            peer text COLLATE "C" NOT NULL,
            counterpart bigint,
            client_id text,
            ts bigint NOT NULL,
            ordinal bigint,
            in_cp bigint,
            in_cid text,
            event bytea NOT NULL,
            PRIMARY KEY (shard, owner, seq)
        );
        CREATE INDEX timeline_conversation ON timeline (shard, owner, peer, seq)
            WHERE kind <> 3;

        -- One row per conversation: last seq, incoming total, read marker and the ordinal at
        -- it (unread = in_total - read_ordinal), newest incoming counterpart. No index on
        -- last_seq: updates stay HOT (in-page, no index writes) and the list of a user's
        -- conversations is sorted when read.
        CREATE TABLE conversations (
            shard smallint NOT NULL,
            owner text COLLATE "C" NOT NULL,
            peer text COLLATE "C" NOT NULL,
            last_seq bigint NOT NULL,
            in_total bigint NOT NULL,
            read_seq bigint NOT NULL,
            read_ordinal bigint NOT NULL,
            in_cp bigint,
            in_cid text,
            PRIMARY KEY (shard, owner, peer)
        ) WITH (fillfactor = 70);

        -- (owner, sender, client_id): the sender's key on the sender's copy, the
        -- recipient's key on the incoming copy; each side of a send is idempotent alone.
        CREATE TABLE dedupe (
            shard smallint NOT NULL,
            owner text COLLATE "C" NOT NULL,
            sender text COLLATE "C" NOT NULL,
            client_id text NOT NULL,
            seq bigint NOT NULL,
            PRIMARY KEY (shard, owner, sender, client_id)
        );

        CREATE TABLE acks (
            shard smallint NOT NULL,
            owner text COLLATE "C" NOT NULL,
            device text NOT NULL,
            seq bigint NOT NULL,
            PRIMARY KEY (shard, owner, device)
        );

        -- Receipt markers: max-registers per (sender, reader, status).
        CREATE TABLE receipts (
            shard smallint NOT NULL,
            owner text COLLATE "C" NOT NULL,
            peer text COLLATE "C" NOT NULL,
            status text NOT NULL,
            up_to bigint NOT NULL,
            PRIMARY KEY (shard, owner, peer, status)
        );

        -- Authoritative on the first server (the directory) only. version grows by one each
        -- time a shard moves, so a node can tell a stale map from a fresh one.
        CREATE TABLE shard_map (
            shard smallint PRIMARY KEY,
            server smallint NOT NULL,
            version bigint NOT NULL DEFAULT 1
        );
        """,
    ),
    (
        2,
        f"""
        -- The fence of a shard moving away: frozen on its old server from the moment its last
        -- rows are copied, so no write lands there any more. A row exists only for a shard
        -- that has been frozen here once; a shard moving in is unfrozen by the move.
        CREATE TABLE shard_fence (
            shard smallint PRIMARY KEY,
            frozen boolean NOT NULL
        );

        -- The frozen shards, read by every writer batch under the shared fence lock. VOLATILE:
        -- the SELECT takes its snapshot after the lock is granted, so it sees a freeze that
        -- committed while the batch waited for it.
        CREATE FUNCTION courier_frozen_shards() RETURNS smallint[]
        LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
            PERFORM pg_advisory_xact_lock_shared({FENCE_LOCK});
            RETURN ARRAY(SELECT shard FROM shard_fence WHERE frozen);
        END
        $$;
        """,
    ),
    (
        3,
        """
        -- Sessions. A token's row gains its last use and the user agent given at login; a
        -- row written before this version has no last use (NULL) until the store lists it
        -- among its user's sessions (at the next start, or at its first use, see
        -- pg_sessions), and the partial index finds those rows at no cost to the others.
        ALTER TABLE tokens ADD COLUMN last_used bigint,
            ADD COLUMN user_agent text NOT NULL DEFAULT '';
        CREATE INDEX tokens_unlisted ON tokens (shard) WHERE last_used IS NULL;

        -- A user's sessions on the user's shard, so listing them is one read on one server
        -- (tokens are placed by their hash). id: the session's public id (not the token).
        CREATE TABLE sessions (
            shard smallint NOT NULL,
            owner text COLLATE "C" NOT NULL,
            id text NOT NULL,
            token_hash bytea NOT NULL,
            created bigint NOT NULL,
            last_used bigint NOT NULL,
            user_agent text NOT NULL DEFAULT '',
            PRIMARY KEY (shard, owner, id)
        ) WITH (fillfactor = 80);  -- no index on last_used: a recorded use stays HOT
        """,
    ),
    (
        4,
        """
        -- Groups (see pg_groups). On the group's server (shard of the group id): its state
        -- (msgpack: name, members with roles) and its seq of fanned-out events.
        CREATE TABLE groups (
            shard smallint NOT NULL,
            id text COLLATE "C" NOT NULL,
            state bytea NOT NULL,
            gseq bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (shard, id)
        );
        -- Fan-out records still to complete: the event after its seq, stored once, and its
        -- recipients as of that moment (and who joins or leaves the group with it).
        CREATE TABLE group_fanout (
            shard smallint NOT NULL,
            gid text COLLATE "C" NOT NULL,
            gseq bigint NOT NULL,
            kind smallint NOT NULL,
            author text NOT NULL,
            client_id text NOT NULL,
            ts bigint NOT NULL,
            tail bytea NOT NULL,
            recipients text[] NOT NULL,
            joins text[] NOT NULL,
            leaves text[] NOT NULL,
            created bigint NOT NULL,
            PRIMARY KEY (shard, gid, gseq)
        );
        -- A group message's client_id, on the group's server: a retry finds its original.
        CREATE TABLE group_dedupe (
            shard smallint NOT NULL,
            gid text COLLATE "C" NOT NULL,
            sender text COLLATE "C" NOT NULL,
            client_id text NOT NULL,
            gseq bigint NOT NULL,
            PRIMARY KEY (shard, gid, sender, client_id)
        );
        -- On each member's server: the groups of a user.
        CREATE TABLE group_members (
            shard smallint NOT NULL,
            owner text COLLATE "C" NOT NULL,
            gid text COLLATE "C" NOT NULL,
            PRIMARY KEY (shard, owner, gid)
        );
        -- A group message's author (its counterpart is the author's seq).
        ALTER TABLE timeline ADD COLUMN author text;
        """,
    ),
    (
        5,
        """
        -- A group's events stored once per server (see pg_groups): each member's timeline row
        -- names it by (peer = group, gseq) and holds no copy (event NULL); the event is
        -- '{"seq":' + the row's seq + tail, as on RocksDB. Shared by the shards of the server,
        -- so it has no shard column: a shard move copies the bodies its rows name.
        CREATE TABLE group_bodies (
            gid text COLLATE "C" NOT NULL,
            gseq bigint NOT NULL,
            ts bigint NOT NULL,
            tail bytea NOT NULL,
            PRIMARY KEY (gid, gseq)
        );
        CREATE INDEX group_bodies_ts ON group_bodies (ts);  -- retention
        ALTER TABLE timeline ADD COLUMN gseq bigint, ALTER COLUMN event DROP NOT NULL;
        -- A member's watermark in a group: the newest gseq applied to their timeline. A
        -- record is applied to the members whose watermark it raises (the claim), so a
        -- repeat adds nothing; records reach a server in gseq order.
        ALTER TABLE conversations ADD COLUMN gseq bigint NOT NULL DEFAULT 0;
        -- The claims of version 4 were dedupe keys (member, group, 'g' + gseq): their
        -- newest is the watermark.
        UPDATE conversations c SET gseq = k.g FROM (
            SELECT shard, owner, sender, max(substr(client_id, 2)::bigint) AS g FROM dedupe
            WHERE sender LIKE 'G%' AND client_id LIKE 'g%' GROUP BY shard, owner, sender) AS k
            WHERE c.shard = k.shard AND c.owner = k.owner AND c.peer = k.sender;
        DELETE FROM dedupe WHERE sender LIKE 'G%' AND client_id LIKE 'g%';
        """,
    ),
    (
        6,
        """
        -- Profiles and people search (see pg_profiles). A user's search terms (domain.profiles:
        -- the username, the folded display name and its later words) sit on the user's server;
        -- a search reads the range of terms starting with the query on every server. The
        -- terms are byte-ordered (COLLATE "C"), so a prefix is a plain index range.
        ALTER TABLE users ADD COLUMN display_name text NOT NULL DEFAULT '',
            ADD COLUMN last_seen bigint NOT NULL DEFAULT 0;
        CREATE TABLE user_terms (
            term text COLLATE "C" NOT NULL,
            username text COLLATE "C" NOT NULL,
            shard smallint NOT NULL,
            PRIMARY KEY (term, username)
        );
        CREATE INDEX user_terms_shard ON user_terms (shard);
        INSERT INTO user_terms (term, username, shard) SELECT username, username, shard FROM users;
        -- Blocks, on the blocker's server: read there by the sends to the blocker and the
        -- receipts for them, in the same batch that writes them.
        CREATE TABLE blocks (
            shard smallint NOT NULL,
            owner text COLLATE "C" NOT NULL,
            blocked text COLLATE "C" NOT NULL,
            PRIMARY KEY (shard, owner, blocked)
        );
        """,
    ),
]

# Timeline kinds: a 1:1 message's incoming and outgoing copies and a receipt; a group
# message (a member's copy, the author's own) and a membership event. SQL that must match
# the partial index `timeline_conversation` writes `kind <> 3` literally.
KIND_IN, KIND_OUT, KIND_RECEIPT = 1, 2, 3
KIND_GROUP_IN, KIND_GROUP_OWN, KIND_GROUP_EVENT = 4, 5, 6

# A timeline row's event, for queries over `timeline t` joined with BODY_JOIN: its own copy, or
# (a group's row) the group's body on this server after the row's seq. NULL when retention
# removed the body (the row is expired too: a body's ts is its rows').
EVENT_SQL = "coalesce(t.event, convert_to('{\"seq\":' || t.seq::text, 'UTF8') || b.tail)"
BODY_JOIN = " LEFT JOIN group_bodies b ON t.event IS NULL AND b.gid = t.peer AND b.gseq = t.gseq"
# The row has an event: its own, or a body still there.
HAS_EVENT = "(t.event IS NOT NULL OR b.tail IS NOT NULL)"


async def migrate(conn: Conn) -> list[int]:
    """Apply the missing migrations; return the versions applied now (empty when current)."""
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied_now.append(version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied_now

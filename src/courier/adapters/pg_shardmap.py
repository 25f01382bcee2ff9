"""The shard map: logical shard -> physical server, kept in the directory (the first server).

The first start lays shard i on server i % servers; after that the table is the truth and the
node only reads it, so a later move of a shard (copy its rows `WHERE shard = X`, flip its row,
bump its version) is seen by every node that reloads the map. All placement goes through
`ShardMap.server_of`, the one place a lookup happens.
"""

from __future__ import annotations

from courier.adapters.pg_schema import Conn
from courier.domain.shards import LOGICAL_SHARDS, shard_of


class ShardMapError(Exception):
    """The directory's map does not fit the configured servers."""


class ShardMap:
    def __init__(self, servers: list[int], versions: list[int]) -> None:
        self._servers = servers
        self._versions = versions

    @property
    def version(self) -> int:
        """The highest shard version: grows whenever any shard moves."""
        return max(self._versions)

    def server_of_shard(self, shard: int) -> int:
        return self._servers[shard]

    def version_of_shard(self, shard: int) -> int:
        return self._versions[shard]

    def server_of(self, key: str | bytes) -> int:
        return self._servers[shard_of(key)]

    def shards_on(self, server: int) -> list[int]:
        return [s for s, srv in enumerate(self._servers) if srv == server]


async def load_shard_map(directory: Conn, server_count: int) -> ShardMap:
    """Create the map on first start (idempotent, safe when nodes race), then read it."""
    await directory.execute(
        "INSERT INTO shard_map (shard, server, version)"
        " SELECT s, s % $2, 1 FROM generate_series(0, $1 - 1) AS s"
        " ON CONFLICT (shard) DO NOTHING",
        LOGICAL_SHARDS,
        server_count,
    )
    return await read_shard_map(directory, server_count)


async def read_shard_map(directory: Conn, server_count: int) -> ShardMap:
    """The map as the directory holds it now; a node rereads it when a shard moves."""
    rows = await directory.fetch("SELECT shard, server, version FROM shard_map ORDER BY shard")
    if len(rows) != LOGICAL_SHARDS or [r["shard"] for r in rows] != list(range(LOGICAL_SHARDS)):
        raise ShardMapError(f"the shard map must list shards 0..{LOGICAL_SHARDS - 1} once each")
    servers = [int(r["server"]) for r in rows]
    if max(servers) >= server_count:
        raise ShardMapError(
            f"the shard map names server {max(servers)} but only {server_count} are configured"
        )
    return ShardMap(servers, [int(r["version"]) for r in rows])

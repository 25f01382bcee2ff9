"""The stable shard function: which of the 1000 logical shards owns a key.

Placement must give the same answer in every process, on every machine and in every future
version, or data written yesterday becomes unreachable today. Python's `hash()` is salted per
process, so it is never used; BLAKE2b is specified by RFC 7693 and ships with `hashlib`, so
`shard_of` is a pure function of the key's bytes. Changing it is a data migration, not a
refactor: tests pin known values.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

LOGICAL_SHARDS = 1000


@lru_cache(maxsize=1 << 16)
def shard_of(key: str | bytes) -> int:
    """The logical shard of a username (UTF-8) or a raw key such as a token hash.

    Cached: the store computes it for every row of every batch, mostly for the same users.
    """
    raw = key.encode() if isinstance(key, str) else key
    digest = hashlib.blake2b(raw, digest_size=8).digest()
    return int.from_bytes(digest, "big") % LOGICAL_SHARDS

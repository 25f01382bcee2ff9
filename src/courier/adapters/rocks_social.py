"""The RocksDB batch's operations on profiles and blocks. A user record and its search terms
change in one WriteBatch, so the index never names a display name the record does not hold;
a block is one key of the blocker's, read by the sends and receipts that it stops."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from rocksdict import WriteBatch

from courier.adapters import rocks_keys as K
from courier.domain.ops import SetBlock, SetLastSeen, SetProfile, UserRecord
from courier.domain.profiles import search_terms


class SocialOps:
    # Provided by Batch.
    wb: WriteBatch

    if TYPE_CHECKING:

        def get(self, key: bytes) -> bytes | None: ...
        def put(self, key: bytes, value: bytes) -> None: ...
        def delete(self, key: bytes) -> None: ...

    def index_user(self, record: UserRecord, old: UserRecord | None = None) -> None:
        """Write the terms `record` has and drop those only `old` had."""
        new = search_terms(record.username, record.display_name)
        if old is not None:
            for term in set(search_terms(old.username, old.display_name)) - set(new):
                self.wb.delete(K.term_key(term, old.username))
        for term in new:
            self.wb.put(K.term_key(term, record.username), b"")

    def set_profile(self, op: SetProfile) -> UserRecord | None:
        raw = self.get(K.user_key(op.username))
        if raw is None:
            return None
        old = msgspec.msgpack.decode(raw, type=UserRecord)
        record = msgspec.structs.replace(old, display_name=op.display_name)
        if record != old:
            self.put(K.user_key(op.username), msgspec.msgpack.encode(record))
            self.index_user(record, old)
        return record

    def set_block(self, op: SetBlock) -> None:
        key = K.block_key(op.owner, op.target)
        if op.on:
            self.put(key, b"")
        else:
            self.delete(key)

    def blocked(self, owner: str, other: str) -> bool:
        """`owner` has blocked `other` (as of this batch)."""
        return self.get(K.block_key(owner, other)) is not None

    def set_last_seen(self, op: SetLastSeen) -> None:
        raw = self.get(K.user_key(op.user))
        if raw is None:
            return
        record = msgspec.msgpack.decode(raw, type=UserRecord)
        if op.ts > record.last_seen:
            seen = msgspec.structs.replace(record, last_seen=op.ts)
            self.put(K.user_key(op.user), msgspec.msgpack.encode(seen))
